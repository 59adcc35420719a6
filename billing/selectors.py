"""Reads of billing: what a tenant uses against what its plan allows.

Usage counts the tenant's own rows, so it runs with the tenant bound (the staff path, in the admin).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Min, Q, Sum
from django.db.models.functions import Coalesce

from billing.models import Plan
from runs.models import Run
from tenants.models import ApiKey, Tenant


@dataclass(frozen=True)
class TenantUsage:
    plan: Plan
    runs: int
    runs_soft_deleted: int
    events: int
    api_keys_active: int
    oldest_activity: datetime | None


def tenant_usage(*, tenant: Tenant) -> TenantUsage:
    kept = Q(deleted_at__isnull=True)
    runs = (
        Run.objects.including_deleted()
        .filter(tenant=tenant)
        .aggregate(
            runs=Count("id", filter=kept),
            soft_deleted=Count("id", filter=~kept),
            # Each run numbers its events 0 .. next_seq - 1: summing runs is exact, and costs
            # one row per run instead of one per event.
            events=Sum("next_seq", filter=kept),
            oldest=Min(Coalesce("last_event_at", "created_at"), filter=kept),
        )
    )
    keys = ApiKey.objects.filter(tenant=tenant, revoked_at__isnull=True).count()
    return TenantUsage(
        plan=tenant.plan,
        runs=runs["runs"],
        runs_soft_deleted=runs["soft_deleted"],
        events=runs["events"] or 0,
        api_keys_active=keys,
        oldest_activity=runs["oldest"],
    )
