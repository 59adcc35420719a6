"""The daily retention jobs, for Celery beat (`kahn_site.celery.BEAT_SCHEDULE`). They only call
`retention.services`; each returns a short summary, kept by the result backend."""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from retention.models import RetentionAction
from retention.services import RetentionOutcome, retention_sweep


def _actor(task: Task) -> str:
    # The record says which job acted, and which run of it (the task id finds its log lines).
    return f"task {task.name} (id {task.request.id})"


def _summary(outcomes: list[RetentionOutcome]) -> dict[str, Any]:
    return {
        "tenants": len(outcomes),
        "runs": sum(len(o.records) for o in outcomes),
        "events": sum(r.events for o in outcomes for r in o.records),
        "batches": sum(len(o.batch_seconds) for o in outcomes),
        "longest_batch_s": round(max((o.longest_batch for o in outcomes), default=0.0), 3),
    }


@shared_task(bind=True, name="retention.soft_delete_expired")
def retention_soft_delete_expired_task(self: Task) -> dict[str, Any]:
    """Soft-deletes, in every tenant, the runs its plan no longer keeps."""
    return _summary(retention_sweep(actions=(RetentionAction.SOFT_DELETE,), actor=_actor(self)))


@shared_task(bind=True, name="retention.hard_delete_expired")
def retention_hard_delete_expired_task(self: Task) -> dict[str, Any]:
    """Removes for good, in every tenant, the runs soft-deleted longer ago than its plan's grace."""
    return _summary(retention_sweep(actions=(RetentionAction.HARD_DELETE,), actor=_actor(self)))
