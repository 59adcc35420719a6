"""Two of everything: two cloud replicas (`manage.py serve --http-workers 2` each, on ports of their
own) and two Celery workers, against one PostgreSQL (through PgBouncer when the suite runs through
it) and one Redis, behave as one service. Everything goes through the real entry points: HTTP to the
replicas' gunicorn workers, WebSocket to their daphne, tasks through the Redis broker.

The processes are started once for the module; each test makes its own tenants and keys (the
database is emptied after each). Their Redis keys and their Celery queue are this module's own.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta

import orjson
import pytest
from cryptography.fernet import Fernet
from django.db import connection
from django.utils import timezone

from billing.models import Plan
from ingest.ratelimit import _window_end
from retention.models import RetentionRecord
from runs.alerts.models import DeliveryAttempt, Notification
from runs.alerts.services import RuleSpec, rule_create
from runs.models import Event, Run
from tenants.context import tenant_scope
from tenants.models import Tenant
from tenants.services import api_key_create
from tests.alerts.receiver import webhook_receiver
from tests.alerts.test_delivery import verified
from tests.conftest import World, scope_server, small_run_events
from tests.ingest.test_rate_limits_replicas import Producer
from tests.retention.conftest import store_run
from tests.runs.live_client import post_events
from tests.runs.test_live_server import resume_property
from tests.runs.test_live_socket import event
from tests.servers import TASK_TIMEOUT, CeleryWorkers, free_port
from tests.tenants.conftest import POSTGRES_ONLY, cloud_server_env
from tests.tenants.conftest import service_role as service_role  # the fixture, for this module

pytestmark = [*POSTGRES_ONLY, pytest.mark.django_db(transaction=True)]

# A Redis database of this module's; its keys and queue carry a prefix of this run's own besides.
REDIS_URL = "redis://127.0.0.1:6379/13"
# Rules' URLs are sealed here, in the test, and opened by the workers: one key for both.
ENCRYPTION_KEY = Fernet.generate_key().decode()
# A waiting bound against hanging, never a measured time.
PATIENCE = 60.0


@dataclass(frozen=True)
class Replica:
    http: str  # gunicorn's workers: the API
    ws: str  # daphne: /ws/live


@dataclass(frozen=True)
class Everything:
    replicas: tuple[Replica, Replica]
    workers: CeleryWorkers


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + PATIENCE
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert time.monotonic() < deadline, f"nothing listens on {port}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def everything(request, django_db_blocker) -> Iterator[Everything]:
    if connection.vendor != "postgresql":
        pytest.skip("cloud mode needs PostgreSQL")
    role = request.getfixturevalue("service_role")
    prefix = f"kahn-test-{uuid.uuid4().hex[:12]}"
    with django_db_blocker.unblock():
        env = cloud_server_env(
            role,
            REDIS_URL=REDIS_URL,
            KAHN_CACHE_KEY_PREFIX=prefix,
            KAHN_LIVE_REDIS_PREFIX=prefix,
            KAHN_RATE_LIMITS="true",
            KAHN_ENCRYPTION_KEY=ENCRYPTION_KEY,
            KAHN_ALERT_ALLOW_PRIVATE="1",
            # Retention in small batches, so that two jobs at once take turns many times over.
            KAHN_RETENTION_BATCH_RUNS="2",
            KAHN_RETENTION_BATCH_EVENTS="8",
        )
    with ExitStack() as stack:
        replicas = []
        for _ in range(2):
            ws_port = free_port()
            args = ("--host", "127.0.0.1", "--http-workers", "2", "--ws-port", str(ws_port))
            http = stack.enter_context(scope_server(env, *args))
            wait_listening(ws_port)
            replicas.append(Replica(http=http, ws=f"http://127.0.0.1:{ws_port}"))
        workers = CeleryWorkers(env, REDIS_URL, queue=prefix)
        stack.callback(lambda: print(workers.stop()))  # their logs, shown when a test fails
        workers.start(2)
        yield Everything(replicas=(replicas[0], replicas[1]), workers=workers)


@pytest.fixture
def acme_key(world: World) -> str:
    """A producer's key of acme, on a plan whose rate limit these tests never reach."""
    roomy = Plan.objects.create(slug="roomy", name="Roomy", ingest_requests_per_minute=1_000_000)
    Tenant.objects.filter(pk=world.acme.pk).update(plan=roomy)
    return api_key_create(tenant=world.acme, name="producer")[1]


def seqs_stored(tenant: Tenant, run_id: str) -> list[int]:
    with tenant_scope(tenant):
        return list(Event.objects.filter(run__run_id=run_id).order_by("seq").values_list("seq", flat=True))


def test_a_batch_retried_on_both_replicas_is_stored_once_and_writers_through_both_get_gap_free_seqs(
    everything, world, acme_key
):
    a, b = everything.replicas
    # One batch with its seqs, sent four times to each replica at once: a producer's retries.
    batch = [event(seq, "retried") for seq in range(40)]
    with ThreadPoolExecutor(8) as pool:
        receipts = list(
            pool.map(
                lambda url: post_events(url, "retried", batch, key=acme_key, first_seq=0),
                [a.http, b.http] * 4,
            )
        )
    assert sum(r["accepted"] for r in receipts) == 40
    assert all(r["accepted"] + r["duplicates"] == 40 and r["next_seq"] == 40 for r in receipts), receipts
    assert seqs_stored(world.acme, "retried") == list(range(40))

    # Four writers append to one run without seqs, each batch to the next replica: the run's seqs
    # are handed out in one order, with no gap and no seq twice.
    post_events(a.http, "shared", [event(0, "shared")], key=acme_key)
    size, rounds = 5, 8

    def writer(number: int) -> list[range]:
        given = []
        urls = [a.http, b.http] if number % 2 == 0 else [b.http, a.http]
        for round_, url in zip(range(rounds), itertools.cycle(urls), strict=False):
            events = [{**event(1, "shared"), "node": f"w{number}_{round_}_{i}"} for i in range(size)]
            receipt = post_events(url, "shared", events, key=acme_key)
            assert receipt["accepted"] == size, receipt
            given.append(range(receipt["next_seq"] - size, receipt["next_seq"]))
        return given

    with ThreadPoolExecutor(4) as pool:
        given = [seqs for seqs in pool.map(writer, range(4)) for seqs in seqs]
    assert sorted(seq for seqs in given for seq in seqs) == list(range(1, 1 + 4 * rounds * size))
    assert seqs_stored(world.acme, "shared") == list(range(1 + 4 * rounds * size))


def test_a_socket_on_one_replica_resumes_gap_free_what_a_producer_posts_to_the_other(everything, acme_key):
    a, b = everything.replicas
    seed = random.randrange(2**32)
    asyncio.run(resume_property(a.ws, "resumed", key=acme_key, seed=seed, producer_url=b.http))


LIMIT = 6
# The limit's window is a fixed minute, shifted per tenant: with less than this left, the test waits
# for the next one, so that every request it counts falls in one window.
SECONDS_NEEDED = 15


def test_the_rate_limit_counts_across_both_replicas(everything, world):
    metered = Plan.objects.create(slug="metered", name="Metered", ingest_requests_per_minute=LIMIT)
    # Of the two tenants, the one whose window has longer to go.
    tenant = max((world.acme, world.globex), key=lambda t: _window_end(t.pk, time.time()))
    Tenant.objects.filter(pk=tenant.pk).update(plan=metered)
    left = _window_end(tenant.pk, time.time()) - time.time()
    if left < SECONDS_NEEDED:
        time.sleep(left + 1.5)
    producer = Producer(api_key_create(tenant=tenant, name="producer")[1])
    replicas = tuple(replica.http for replica in everything.replicas)
    assert producer.alternate(replicas, 2 * LIMIT) == [200] * LIMIT + [429] * LIMIT
    by_replica = {url: [a.status_code for a in producer.answers if a.url.startswith(url)] for url in replicas}
    assert all(codes == [200] * (LIMIT // 2) + [429] * (LIMIT // 2) for codes in by_replica.values()), (
        by_replica
    )
    resets = [int(a.headers["X-RateLimit-Reset"]) for a in producer.answers]
    assert resets == sorted(resets, reverse=True), resets  # one window throughout


def test_retention_sent_twice_at_once_to_two_workers_acts_on_each_run_once(everything, world):
    plan = Plan.objects.create(slug="short", name="Short", retention_days=90, hard_delete_after_days=0)
    Tenant.objects.filter(pk=world.acme.pk).update(plan=plan)
    now = timezone.now()
    expired = {store_run(world.acme, f"old_{n}", now - timedelta(days=100 + n)).run_id for n in range(12)}
    store_run(world.acme, "kept", now - timedelta(days=1))

    workers = everything.workers

    def twice_at_once(task: str) -> list[dict]:
        sent = [workers.send(task) for _ in range(2)]
        try:
            results = [result.get(timeout=TASK_TIMEOUT) for result in sent]
        finally:
            for result in sent:
                result.forget()
        assert sum(r["runs"] for r in results) == 12, results
        return results

    twice_at_once("retention.soft_delete_expired")
    with tenant_scope(world.acme):
        assert list(Run.objects.values_list("run_id", flat=True)) == ["kept"]
    twice_at_once("retention.hard_delete_expired")
    with tenant_scope(world.acme):
        assert list(Run.objects.including_deleted().values_list("run_id", flat=True)) == ["kept"]
        records = list(RetentionRecord.objects.values_list("run_id", "action"))
    # One record per run and action: neither job acted on a run the other had.
    assert sorted(records) == sorted(
        (run_id, action) for run_id in expired for action in ("hard_delete", "soft_delete")
    )


def test_a_failing_run_posted_to_both_replicas_is_notified_once_and_delivered_once(
    everything, world, acme_key, settings
):
    settings.KAHN_ENCRYPTION_KEY = ENCRYPTION_KEY
    a, b = everything.replicas
    workers = everything.workers
    with webhook_receiver() as receiver:
        spec = RuleSpec(name="failures", condition="run_failed", channel_kind="webhook", url=receiver.url)
        _rule, secret = rule_create(tenant=world.acme, spec=spec)
        events = small_run_events("nightly", ok=False)
        with ThreadPoolExecutor(4) as pool:
            receipts = list(
                pool.map(
                    lambda url: post_events(url, "nightly", events, key=acme_key, first_seq=0),
                    [a.http, b.http] * 2,
                )
            )
        assert sum(r["accepted"] for r in receipts) == len(events)
        with tenant_scope(world.acme):
            (notification,) = Notification.objects.all()
        assert (notification.type, notification.run_id, notification.status) == (
            "run.failed",
            "nightly",
            "pending",
        )

        # Ticks, several at once, to both workers: each takes due notifications FOR UPDATE SKIP LOCKED.
        for _ in range(6):
            workers.send("alerts.tick")
        deadline = time.monotonic() + PATIENCE
        while True:
            with tenant_scope(world.acme):
                notification = Notification.objects.get()
            if notification.status == "delivered":
                break
            assert time.monotonic() < deadline, f"not delivered: {notification.status}"
            time.sleep(0.1)
        workers.wait_idle()
        # And more, once it is delivered: nothing is due.
        for _ in range(4):
            workers.send("alerts.tick")
        workers.wait_idle()

    assert {r.headers["webhook-id"] for r in receiver.requests} == {notification.webhook_id}
    assert len(receiver.requests) == 1
    (request,) = receiver.requests
    assert verified(secret, request.headers, request.body)
    body = orjson.loads(request.body)
    assert body["type"] == "run.failed" and body["run"]["run_id"] == "nightly"
    with tenant_scope(world.acme):
        assert notification.attempts == 1
        assert DeliveryAttempt.objects.count() == 1
