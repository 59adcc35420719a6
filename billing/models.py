"""Plans: what a tenant may do and how long its runs are kept (SPEC section 9).

A plan is edited in Django admin; every tenant has one, and a change takes effect on the tenant's
next request and the next retention run, as both read the plan when they need it.
"""

from django.core.validators import MinValueValidator
from django.db import models

# The plan every tenant gets unless told otherwise; created by migration.
DEFAULT_PLAN_SLUG = "default"


class Plan(models.Model):
    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=200)
    retention_days = models.PositiveIntegerField(
        default=90,
        # Zero would soft-delete every run at the next retention run, a mistake more than a plan.
        validators=[MinValueValidator(1)],
        help_text="a run whose last event is older than this is soft-deleted",
    )
    hard_delete_after_days = models.PositiveIntegerField(
        default=7, help_text="grace after a soft delete before the run and its events are removed"
    )
    ingest_requests_per_minute = models.PositiveIntegerField(
        default=600, help_text="ingest API requests per minute, counted across every replica"
    )
    max_api_keys = models.PositiveIntegerField(default=10, help_text="active (unrevoked) API keys")

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


def plan_default_id() -> int:
    """The default plan's id, for `Tenant.plan`'s default.

    Get-or-create, not get: a test database flushed between tests has lost the migration's row.
    """
    plan, _ = Plan.objects.get_or_create(slug=DEFAULT_PLAN_SLUG, defaults={"name": "Default"})
    return plan.pk
