"""The retention record: one row per action on a run (soft delete, hard delete, restore).

It answers "why did my run vanish" after the run itself is gone, so it holds no foreign key to the
run, only its id and database id, and it carries everything the answer needs: the plan and its
days, when, by which job or person, and how many rows the action concerned. It is the tenant's own
data (row-level security, like its runs), and it stays when the run is hard-deleted.
"""

from datetime import datetime

from django.db import models
from django.db.models import Q

from tenants.models import Tenant
from tenants.scoping import TenantScopedManager


class RetentionAction(models.TextChoices):
    SOFT_DELETE = "soft_delete", "soft-deleted"
    HARD_DELETE = "hard_delete", "hard-deleted"
    RESTORE = "restore", "restored"


# The actions after which a run is gone: its API answers 410 `run_deleted`, and no write reaches it.
DELETIONS = (RetentionAction.SOFT_DELETE, RetentionAction.HARD_DELETE)


class RetentionRecord(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="retention_records")
    run_ref = models.BigIntegerField(
        help_text="the run's database id: no foreign key, the record outlives it"
    )
    run_id = models.CharField(max_length=64)
    action = models.CharField(max_length=20, choices=RetentionAction.choices)
    at = models.DateTimeField()
    actor = models.CharField(max_length=200, help_text="the job (with its task id) or the person who acted")
    reason = models.CharField(max_length=300)
    plan_slug = models.SlugField(max_length=50, help_text="the tenant's plan when it acted")
    days = models.PositiveIntegerField(
        help_text="the plan's retention_days (soft delete, restore) or hard_delete_after_days (hard delete)"
    )
    last_event_at = models.DateTimeField(null=True, blank=True, help_text="the run's last event")
    events = models.PositiveIntegerField(
        default=0, help_text="events the action hid, removed or brought back"
    )
    diagnostics = models.PositiveIntegerField(default=0)
    nodes = models.PositiveIntegerField(default=0)

    objects = TenantScopedManager()

    # Not a column: set by the retention page (retention.views), from the tenant's plan of the day.
    restorable_until: datetime | None

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [
            # "What happened last to run X" (the 410 answer, the write path's refusal): the id, not
            # `at`, orders a run's records, as `at` is the caller's clock.
            models.Index(fields=["tenant", "run_id", "-id"], name="retention_by_run"),
            # The tenant's page of recent deletions.
            models.Index(fields=["tenant", "-at", "-id"], name="retention_recent"),
        ]
        constraints = [
            # A run is hard-deleted once, however many workers run the job at the same time.
            models.UniqueConstraint(
                fields=["run_ref", "tenant"],
                condition=Q(action="hard_delete"),
                name="retention_one_hard_delete_per_run",
            )
        ]

    def __str__(self) -> str:
        return f"{self.run_id} {self.get_action_display()} at {self.at:%Y-%m-%d %H:%M}"
