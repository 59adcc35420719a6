"""Alerts through `manage.py serve` in OSS mode, a real process: its follower imports the archive,
the write path records the notification, and its delivery loop posts it to a webhook receiver on
loopback within seconds. A server killed while a delivery is in flight delivers it after restart,
with the same `webhook-id`, so a receiver that deduplicates by it sees one."""

from __future__ import annotations

import os
import signal
import time

import orjson
import pytest

from runs.alerts.models import Notification
from runs.alerts.services import RuleSpec, rule_create
from tenants.context import tenant_scope
from tests.alerts.receiver import Receiver, webhook_receiver
from tests.alerts.test_delivery import verified
from tests.conftest import manage_env, scope_server
from tests.servers import served

pytestmark = pytest.mark.django_db(transaction=True)


def serve_env(archive) -> dict[str, str]:
    return manage_env(KAHN_ARCHIVE=str(archive))


def wait_for(receiver: Receiver, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(receiver.requests) < count:
        assert time.monotonic() < deadline, f"{len(receiver.requests)} of {count} webhooks arrived"
        time.sleep(0.05)


def test_serve_follows_the_archive_and_delivers_the_webhook(local_tenant, sample_archive):
    with webhook_receiver() as receiver:
        spec = RuleSpec(name="failures", condition="run_failed", channel_kind="webhook", url=receiver.url)
        _rule, secret = rule_create(tenant=local_tenant, spec=spec)
        with scope_server(serve_env(sample_archive), "--follow-interval", "0.2"):
            wait_for(receiver, 1)
            time.sleep(0.5)  # nothing else comes
    (request,) = receiver.requests
    assert verified(secret, request.headers, request.body)
    body = orjson.loads(request.body)
    assert body["type"] == "run.failed" and body["run"]["run_id"] == "run_failed"
    with tenant_scope(local_tenant):
        assert Notification.objects.get(tenant=local_tenant).status == "delivered"


def test_a_server_killed_mid_delivery_delivers_after_restart_with_the_same_id(local_tenant, sample_archive):
    with webhook_receiver(hold_first=True) as receiver:
        spec = RuleSpec(name="failures", condition="run_failed", channel_kind="webhook", url=receiver.url)
        rule_create(tenant=local_tenant, spec=spec)
        env = serve_env(sample_archive)
        with served(env, "--follow-interval", "0.2") as server:
            assert receiver.arrived.wait(60), "the first delivery never started"
            os.kill(server.pid, signal.SIGKILL)  # mid-delivery: its answer never read, nothing recorded
        with tenant_scope(local_tenant):
            caught = Notification.objects.get(tenant=local_tenant)
        assert caught.status == "pending" and caught.attempts == 0
        receiver.release_first.set()
        with scope_server(env, "--follow-interval", "0.2"):
            wait_for(receiver, 2)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with tenant_scope(local_tenant):
                    done = Notification.objects.get(tenant=local_tenant)
                if done.status == "delivered":
                    break
                time.sleep(0.1)
    assert {r.headers["webhook-id"] for r in receiver.requests} == {caught.webhook_id}
    assert done.status == "delivered" and done.attempts == 1
