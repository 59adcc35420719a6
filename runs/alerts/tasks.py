"""Cloud mode's alerts worker: one tick every few seconds from Celery beat
(`kahn_site.celery.BEAT_SCHEDULE`), which only calls `runs.alerts.delivery`."""

from __future__ import annotations

from celery import shared_task

from runs.alerts.delivery import alerts_tick


# Ticks overlap harmlessly: each notification is taken FOR UPDATE SKIP LOCKED. One that outlives
# its successor's schedule is not worth keeping queued, hence the expiry.
@shared_task(name="alerts.tick", ignore_result=True, expires=30)
def alerts_tick_task() -> int:
    """The periodic check (`run_interrupted`), then the delivery of every due notification."""
    return alerts_tick()
