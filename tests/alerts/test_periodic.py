"""The worker's tick (Celery beat in cloud mode, `serve`'s loop in OSS): `run_interrupted` found by
the periodic check, and every tenant's due notifications delivered, under row-level security too."""

from __future__ import annotations

from datetime import timedelta

import orjson
import pytest
from django.db import connection
from django.utils import timezone

from runs.alerts.models import Notification
from runs.alerts.services import RuleSpec, rule_create
from runs.alerts.tasks import alerts_tick_task
from tenants.context import tenant_scope
from tests.alerts.receiver import webhook_receiver
from tests.conftest import run_record
from tests.tenants.conftest import connected_as


def webhook(tenant, url: str, condition: str = "run_failed", glob: str = ""):
    spec = RuleSpec(name=condition, condition=condition, run_id_glob=glob, channel_kind="webhook", url=url)
    return rule_create(tenant=tenant, spec=spec)[0]


def test_a_run_gone_silent_is_reported_interrupted_once_by_the_periodic_task(client, local_tenant):
    now = timezone.now()
    started = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    events = [
        {
            "event": "run_start",
            "ts": started,
            "run_id": "deploy-1",
            "graph": {"version": 1, "nodes": [{"id": "a", "deps": []}]},
        },
        {"event": "transition", "ts": started, "node": "a", "from": "pending", "to": "running", "attempt": 1},
    ]
    with webhook_receiver() as receiver:
        webhook(local_tenant, receiver.url, "run_interrupted", glob="deploy-*")
        body = b"".join(orjson.dumps(e) + b"\n" for e in events)
        assert client.post(
            "/api/v1/runs/deploy-1/events", data=body, content_type="application/x-ndjson"
        ).status_code in (200, 201)
        alerts_tick_task.apply()  # still running: nothing
        assert receiver.requests == []
        from runs.alerts.delivery import alerts_tick

        later = now + timedelta(hours=2)  # silent past KAHN_STALE_AFTER
        alerts_tick(now=later)
        alerts_tick(now=later + timedelta(minutes=1))
    (request,) = receiver.requests
    message = orjson.loads(request.body)
    assert message["type"] == "run.interrupted" and message["run"]["run_id"] == "deploy-1"
    with tenant_scope(local_tenant):
        assert Notification.objects.filter(tenant=local_tenant).count() == 1


def test_the_celery_task_delivers_what_is_due(local_tenant):
    with webhook_receiver() as receiver:
        webhook(local_tenant, receiver.url)
        run_record(local_tenant, "nightly-1", ok=False)
        assert alerts_tick_task.apply().get() == 1
    assert [orjson.loads(r.body)["run"]["run_id"] for r in receiver.requests] == ["nightly-1"]


@pytest.mark.postgres
@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL (row-level security)")
def test_the_tick_delivers_every_tenants_notifications_as_the_service_role(service_role, transactional_db):
    from tests.conftest import world_build

    world = world_build()
    with webhook_receiver() as receiver:
        for tenant in (world.acme, world.globex):
            webhook(tenant, receiver.url)
        with connected_as(service_role):
            run_record(world.acme, "acme-nightly", ok=False)
            run_record(world.globex, "globex-nightly", ok=False)
            assert alerts_tick_task.apply().get() == 2
    sent = sorted(
        (m["tenant"], m["run"]["run_id"]) for m in (orjson.loads(r.body) for r in receiver.requests)
    )
    assert sent == [("acme", "acme-nightly"), ("globex", "globex-nightly")]


def test_beat_ticks_the_alerts_every_few_seconds_with_a_task_the_worker_knows():
    from kahn_site.celery import BEAT_SCHEDULE
    from kahn_site.celery import app as kahn_celery

    kahn_celery.loader.import_default_modules()
    (entry,) = [entry for entry in BEAT_SCHEDULE.values() if entry["task"].startswith("alerts.")]
    assert entry["task"] == "alerts.tick" and entry["task"] in kahn_celery.tasks
    assert entry["schedule"] <= 10  # seconds: notifications go out within seconds
