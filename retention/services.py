"""Retention's writes (SPEC section 9): soft delete, hard delete and restore, each with its record.

Every job acts on one tenant at a time, entered through the staff path (which records the entry),
in bounded batches: each batch is its own transaction, bound to the tenant so row-level security
applies, so a large tenant never holds locks for long, and a job cut short rolls back one batch at
most, which the next run does again. A batch takes at most `KAHN_RETENTION_BATCH_RUNS` runs, and a
hard delete batch removes at most `KAHN_RETENTION_BATCH_EVENTS` events: a run with more is removed
over several, from the top of its log down, its progress kept in its own `next_seq`.

Runs are claimed with `FOR UPDATE SKIP LOCKED`: a second worker running the same job at the same
time takes other runs (or none) instead of waiting for the first, and a run a producer is writing
to right now is left for the next run. Each action is recorded in the transaction that does it, so
a run is acted on and recorded exactly once; for hard deletes the database enforces it too
(`retention_one_hard_delete_per_run`). A job run again finds nothing left to do: it is idempotent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial

from django.conf import settings
from django.db import connection
from django.db.models import Model, QuerySet
from django.utils import timezone

from billing.models import Plan
from retention import selectors
from retention.models import RetentionAction, RetentionRecord
from runs.models import Diagnostic, Event, Run, RunNode
from tenants.context import tenant_atomic
from tenants.models import Tenant
from tenants.staff import staff_access_record, staff_tenant_access

logger = logging.getLogger(__name__)


class RestoreRefused(Exception):
    """The run cannot be restored; the message says why, in one sentence."""


@dataclass
class RetentionOutcome:
    """What one job did to one tenant: its records, and how long each batch held its locks."""

    tenant: Tenant
    plan: Plan
    action: str
    records: list[RetentionRecord] = field(default_factory=list)
    batch_seconds: list[float] = field(default_factory=list)

    @property
    def longest_batch(self) -> float:
        return max(self.batch_seconds, default=0.0)


def _tenant_with_plan(tenant: Tenant) -> tuple[Tenant, Plan]:
    # Read now, not taken from the caller: a plan changed since applies to this run (SPEC section 9).
    tenant = Tenant.objects.select_related("plan").get(pk=tenant.pk)
    return tenant, tenant.plan


def _claimed(runs: QuerySet[Run], limit: int) -> list[Run]:
    """Locks up to `limit` of these runs, skipping any another transaction holds (SQLite, which
    has one writer at a time, ignores the clause)."""
    return list(runs.select_for_update(skip_locked=True)[:limit])


def _in_batches(
    outcome: RetentionOutcome,
    *,
    candidates: Callable[[], QuerySet[Run]],
    batch_runs: int,
    act: Callable[[list[Run]], list[RetentionRecord]],
) -> RetentionOutcome:
    """A job's loop: claims up to `batch_runs` candidates and acts on them, one transaction for
    the tenant a batch, until none is left; each batch's time and records go into `outcome`."""
    tenant = outcome.tenant
    while True:
        started = time.perf_counter()
        with tenant_atomic(tenant):
            runs = _claimed(candidates(), batch_runs)
            if not runs:
                return outcome
            records = act(runs)
        outcome.batch_seconds.append(time.perf_counter() - started)
        outcome.records.extend(records)


def _day(value: datetime) -> str:
    return f"{value:%Y-%m-%d %H:%M} UTC"


def _soft_delete_reason(run: Run, plan: Plan) -> str:
    terms = f"more than the {plan.retention_days} days plan “{plan.slug}” keeps a run"
    last_active = run.last_event_at or run.created_at
    if run.restored_at is not None and run.restored_at > last_active:
        return f"restored {_day(run.restored_at)} and not active since, {terms}"
    if run.last_event_at is None:
        return f"no event since it was created {_day(run.created_at)}, {terms}"
    return f"last event {_day(run.last_event_at)}, {terms}"


def _hard_delete_reason(run: Run, plan: Plan) -> str:
    assert run.deleted_at is not None
    return (
        f"soft-deleted {_day(run.deleted_at)}, more than the {plan.hard_delete_after_days} days plan "
        f"“{plan.slug}” allows to restore a run; its events, nodes, diagnostics, graph and summary "
        "are removed"
    )


def _record(
    run: Run, *, action: str, plan: Plan, days: int, reason: str, actor: str, now: datetime
) -> RetentionRecord:
    # Counts come from the run's own counters, kept by the one write path: its events are numbered
    # 0 .. next_seq - 1 without a gap, and each stored diagnostic and node row is counted on it.
    return RetentionRecord(
        tenant_id=run.tenant_id,
        run_ref=run.pk,
        run_id=run.run_id,
        action=action,
        at=now,
        actor=actor,
        reason=reason,
        plan_slug=plan.slug,
        days=days,
        last_event_at=run.last_event_at,
        events=run.next_seq,
        diagnostics=run.errors + run.warnings + run.infos,
        nodes=run.total_nodes,
    )


def retention_soft_delete_expired(
    *, tenant: Tenant, actor: str, now: datetime | None = None, batch_runs: int | None = None
) -> RetentionOutcome:
    """Soft-deletes the tenant's runs whose last event is older than its plan's `retention_days`."""
    now = now or timezone.now()
    batch_runs = batch_runs or settings.KAHN_RETENTION_BATCH_RUNS
    tenant, plan = _tenant_with_plan(tenant)
    staff_access_record(tenant=tenant, actor=actor, reason="retention: soft delete")

    def soft_delete(runs: list[Run]) -> list[RetentionRecord]:
        Run.objects.including_deleted().filter(tenant=tenant, pk__in=[run.pk for run in runs]).update(
            deleted_at=now
        )
        return RetentionRecord.objects.bulk_create(
            _record(
                run,
                action=RetentionAction.SOFT_DELETE,
                plan=plan,
                days=plan.retention_days,
                reason=_soft_delete_reason(run, plan),
                actor=actor,
                now=now,
            )
            for run in runs
        )

    return _in_batches(
        RetentionOutcome(tenant=tenant, plan=plan, action=RetentionAction.SOFT_DELETE),
        candidates=lambda: selectors.soft_delete_candidates(tenant=tenant, plan=plan, now=now),
        batch_runs=batch_runs,
        act=soft_delete,
    )


def retention_hard_delete_expired(
    *,
    tenant: Tenant,
    actor: str,
    now: datetime | None = None,
    batch_events: int | None = None,
    batch_runs: int | None = None,
) -> RetentionOutcome:
    """Removes for good the tenant's runs soft-deleted longer ago than its plan's grace, with
    their events, diagnostics and node rows (the graph and summary are columns of the run)."""
    now = now or timezone.now()
    batch_events = batch_events or settings.KAHN_RETENTION_BATCH_EVENTS
    batch_runs = batch_runs or settings.KAHN_RETENTION_BATCH_RUNS
    tenant, plan = _tenant_with_plan(tenant)
    staff_access_record(tenant=tenant, actor=actor, reason="retention: hard delete")
    return _in_batches(
        RetentionOutcome(tenant=tenant, plan=plan, action=RetentionAction.HARD_DELETE),
        candidates=lambda: selectors.hard_delete_candidates(tenant=tenant, plan=plan, now=now),
        batch_runs=batch_runs,
        act=partial(_hard_delete_batch, tenant, plan, actor=actor, now=now, batch_events=batch_events),
    )


def _hard_delete_batch(
    tenant: Tenant, plan: Plan, runs: list[Run], *, actor: str, now: datetime, batch_events: int
) -> list[RetentionRecord]:
    """One transaction's share: whole runs while their events fit in `batch_events`, else the top
    `batch_events` events of the first run. Records a run's hard delete in the first transaction
    that removes any of it, with the counts it had then."""
    whole, budget = [], batch_events
    for run in runs:
        if run.next_seq > budget:
            break
        whole.append(run)
        budget -= run.next_seq
    touched = whole or runs[:1]
    begun = selectors.runs_hard_deletion_begun(tenant=tenant, run_refs=[run.pk for run in touched])
    records = RetentionRecord.objects.bulk_create(
        _record(
            run,
            action=RetentionAction.HARD_DELETE,
            plan=plan,
            days=plan.hard_delete_after_days,
            reason=_hard_delete_reason(run, plan),
            actor=actor,
            now=now,
        )
        for run in touched
        if run.pk not in begun
    )
    if whole:
        ids = [run.pk for run in whole]
        for model in (Event, Diagnostic, RunNode):
            _delete_rows(model, tenant, "run_id", ids)
        _delete_rows(Run, tenant, "id", ids)
    else:
        # Too many events for one batch: the top of the log goes now, the rest in the next batches.
        # The range has both ends so the index scan never walks the entries already deleted above.
        run = runs[0]
        low = run.next_seq - batch_events
        with connection.cursor() as cursor:
            cursor.execute(
                f"DELETE FROM {_table(Event)} "
                "WHERE tenant_id = %s AND run_id = %s AND seq >= %s AND seq < %s",
                [tenant.pk, run.pk, low, run.next_seq],
            )
            cursor.execute(f"UPDATE {_table(Run)} SET next_seq = %s WHERE id = %s", [low, run.pk])
    return records


def _table(model: type[Model]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def _delete_rows(model: type[Model], tenant: Tenant, column: str, ids: Sequence[int]) -> None:
    # Plain SQL: the managers hide a soft-deleted run and its parts, which are exactly what goes
    # here. The tenant is named in code as well as bound for row-level security.
    placeholders = ", ".join(["%s"] * len(ids))
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {_table(model)} WHERE tenant_id = %s AND {connection.ops.quote_name(column)} "
            f"IN ({placeholders})",
            [tenant.pk, *ids],
        )


def retention_restore(
    *, tenant: Tenant, run_id: str, actor: str, now: datetime | None = None
) -> RetentionRecord:
    """Brings back a soft-deleted run whole; its plan's `retention_days` start again from now."""
    now = now or timezone.now()
    tenant, plan = _tenant_with_plan(tenant)
    with staff_tenant_access(tenant=tenant, actor=actor, reason=f"retention: restore run {run_id}"):
        # Waits for a retention batch holding the run, then sees what it left.
        run = (
            Run.objects.including_deleted()
            .select_for_update()
            .filter(tenant=tenant, run_id=run_id)
            .only(*selectors.RUN_FIELDS)
            .first()
        )
        if run is None:
            deletion = selectors.run_deletion(tenant=tenant, run_id=run_id)
            if deletion is not None:
                raise RestoreRefused(
                    f"run {run_id!r} was hard-deleted on {_day(deletion.at)}: nothing is left to restore"
                )
            raise RestoreRefused(f"there is no run {run_id!r}")
        if run.deleted_at is None:
            raise RestoreRefused(f"run {run_id!r} is not deleted")
        if selectors.runs_hard_deletion_begun(tenant=tenant, run_refs=[run.pk]):
            raise RestoreRefused(f"run {run_id!r} is being hard-deleted: it can no longer be restored")
        deleted_at = run.deleted_at
        Run.objects.including_deleted().filter(tenant=tenant, pk=run.pk).update(
            deleted_at=None, restored_at=now
        )
        record = _record(
            run,
            action=RetentionAction.RESTORE,
            plan=plan,
            days=plan.retention_days,
            reason=(
                f"restored from its soft delete of {_day(deleted_at)}; plan “{plan.slug}” keeps it "
                f"{plan.retention_days} days from now"
            ),
            actor=actor,
            now=now,
        )
        record.save()
        return record


# What a sweep does, in this order: yesterday's soft deletes past their grace go first, then the
# runs that expired today are soft-deleted.
JOBS = {
    RetentionAction.HARD_DELETE: retention_hard_delete_expired,
    RetentionAction.SOFT_DELETE: retention_soft_delete_expired,
}


def retention_sweep(
    *,
    actions: Sequence[str],
    actor: str,
    now: datetime | None = None,
    tenants: Sequence[Tenant] | None = None,
) -> list[RetentionOutcome]:
    """Runs the retention jobs named by `actions` for every tenant (or those given), one tenant at a
    time. A tenant whose job fails is logged and the others still run; the first error is raised
    at the end, so a scheduler sees the failure."""
    now = now or timezone.now()
    tenants = list(tenants) if tenants is not None else list(Tenant.objects.order_by("pk"))
    outcomes: list[RetentionOutcome] = []
    failure: Exception | None = None
    for tenant in tenants:
        for action in JOBS:
            if action not in actions:
                continue
            try:
                outcomes.append(JOBS[action](tenant=tenant, actor=actor, now=now))
            except Exception as exc:
                logger.exception("retention: %s failed for tenant %s", action, tenant.slug)
                failure = failure or exc
    if failure is not None:
        raise failure
    return outcomes
