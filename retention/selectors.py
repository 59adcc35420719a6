"""Reads of retention: which runs a plan no longer keeps, and what happened to a run that is gone.

A run's retention clock is its last event (or, with no event yet, its creation), and starts again
when it is restored: a restored run gets its plan's full `retention_days` back instead of being
deleted again by the next daily run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import Count, JSONField, Q, QuerySet, Sum

from billing.models import Plan
from retention.models import DELETIONS, RetentionAction, RetentionRecord
from runs.models import Run
from tenants.models import Tenant

# Run columns the retention jobs read: enough to decide, to lock and to write the record. Every
# column but the JSON ones (the run's documents, its node counts and the reduction's working state,
# many times larger than the rest), so a column added to Run needs nothing here.
RUN_FIELDS = tuple(f.attname for f in Run._meta.concrete_fields if not isinstance(f, JSONField))


def soft_delete_cutoff(plan: Plan, now: datetime) -> datetime:
    """A run last active before this is past its plan's `retention_days`."""
    return now - timedelta(days=plan.retention_days)


def hard_delete_cutoff(plan: Plan, now: datetime) -> datetime:
    """A run soft-deleted before this is past its plan's grace (`hard_delete_after_days`)."""
    return now - timedelta(days=plan.hard_delete_after_days)


def _last_active_before(cutoff: datetime) -> Q:
    last_event = Q(last_event_at__lt=cutoff) | Q(last_event_at__isnull=True, created_at__lt=cutoff)
    return last_event & (Q(restored_at__isnull=True) | Q(restored_at__lt=cutoff))


def soft_delete_candidates(*, tenant: Tenant, plan: Plan, now: datetime) -> QuerySet[Run]:
    """The tenant's kept runs that its plan no longer keeps, oldest first."""
    # Spelled out although the manager hides deleted runs: each batch must leave this set, or the
    # job would never end.
    return (
        Run.objects.including_deleted()
        .filter(tenant=tenant, deleted_at__isnull=True)
        .filter(_last_active_before(soft_delete_cutoff(plan, now)))
        .only(*RUN_FIELDS)
        .order_by("last_event_at", "id")
    )


def hard_delete_candidates(*, tenant: Tenant, plan: Plan, now: datetime) -> QuerySet[Run]:
    """The tenant's soft-deleted runs past the plan's grace, first deleted first."""
    return (
        Run.objects.including_deleted()
        .filter(tenant=tenant, deleted_at__lt=hard_delete_cutoff(plan, now))
        .only(*RUN_FIELDS)
        .order_by("deleted_at", "id")
    )


@dataclass(frozen=True)
class RetentionDue:
    """What a retention run would do to one tenant now: how many runs and events, and the first few."""

    runs: int
    events: int
    first: list[Run]


def retention_due(runs: QuerySet[Run], *, show: int) -> RetentionDue:
    """Counts a candidate queryset (`soft_delete_candidates`, `hard_delete_candidates`) and lists
    its first `show` runs."""
    totals = runs.order_by().aggregate(runs=Count("id"), events=Sum("next_seq"))
    return RetentionDue(runs=totals["runs"], events=totals["events"] or 0, first=list(runs[:show]))


def soft_deleted_runs(*, tenant: Tenant) -> QuerySet[Run]:
    """The runs that can still be restored, most recently deleted first."""
    return (
        Run.objects.including_deleted()
        .filter(tenant=tenant, deleted_at__isnull=False)
        .only(*RUN_FIELDS)
        .order_by("-deleted_at", "-id")
    )


def run_deletion(*, tenant: Tenant, run_id: str) -> RetentionRecord | None:
    """The record of the deletion that removed run `run_id`, if retention removed it and it has
    not been restored since; None for a run that exists or never did."""
    latest = RetentionRecord.objects.filter(tenant=tenant, run_id=run_id).order_by("-id").first()
    return latest if latest is not None and latest.action in DELETIONS else None


def runs_deleted_among(*, tenant: Tenant, run_ids: list[str]) -> dict[str, RetentionRecord]:
    """Of these run ids, those retention removed (and nobody restored), with their records."""
    latest: dict[str, RetentionRecord] = {}
    for record in RetentionRecord.objects.filter(tenant=tenant, run_id__in=run_ids).order_by("id"):
        latest[record.run_id] = record
    return {run_id: record for run_id, record in latest.items() if record.action in DELETIONS}


def runs_hard_deletion_begun(*, tenant: Tenant, run_refs: list[int]) -> set[int]:
    """Of these runs (by database id), those whose hard delete has begun: it is recorded in the
    first transaction that removes any of their rows, and a large run takes several."""
    return set(
        RetentionRecord.objects.filter(
            tenant=tenant, run_ref__in=run_refs, action=RetentionAction.HARD_DELETE
        ).values_list("run_ref", flat=True)
    )


def retention_records_recent(
    *, tenant: Tenant, before_id: int | None = None, limit: int = 100
) -> list[RetentionRecord]:
    """The tenant's retention records, newest first, a page at a time (older than `before_id`)."""
    records = RetentionRecord.objects.filter(tenant=tenant)
    if before_id is not None:
        records = records.filter(id__lt=before_id)
    return list(records.order_by("-id")[:limit])


def restorable_until(record: RetentionRecord, plan: Plan) -> datetime | None:
    """For a soft delete: when the grace of the tenant's current plan ends (the first retention run
    after it removes the run for good). None for any other action."""
    if record.action != RetentionAction.SOFT_DELETE:
        return None
    return record.at + timedelta(days=plan.hard_delete_after_days)


def retention_terms(plan: Plan) -> str:
    """The plan's retention, as the pages and the command say it."""
    days = "day" if plan.retention_days == 1 else "days"
    grace = "day" if plan.hard_delete_after_days == 1 else "days"
    return (
        f"plan “{plan.slug}” keeps a run {plan.retention_days} {days} after its last event; a deleted "
        f"run can be restored for {plan.hard_delete_after_days} {grace}, then it is removed for good"
    )


def run_deletion_details(record: RetentionRecord, plan: Plan) -> dict[str, Any]:
    """What a client is told about a deleted run: the record, and until when it can be restored."""
    until = restorable_until(record, plan)
    return {
        "run_id": record.run_id,
        "action": record.action,
        "at": _timestamp(record.at),
        "reason": record.reason,
        "plan": record.plan_slug,
        "days": record.days,
        "by": record.actor,
        "last_event_at": _timestamp(record.last_event_at),
        "events": record.events,
        "diagnostics": record.diagnostics,
        "nodes": record.nodes,
        "restorable_until": _timestamp(until),
    }


def run_deletion_sentence(record: RetentionRecord, plan: Plan) -> str:
    sentence = (
        f"run {record.run_id!r} was {record.get_action_display()} by retention on "
        f"{record.at:%Y-%m-%d %H:%M} UTC: {record.reason}"
    )
    until = restorable_until(record, plan)
    if until is not None:
        sentence += f"; it can be restored until {until:%Y-%m-%d %H:%M} UTC"
    return sentence


def _timestamp(value: datetime | None) -> str | None:
    # RFC 3339 UTC with milliseconds, as every time in the API.
    return (
        None
        if value is None
        else value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )
