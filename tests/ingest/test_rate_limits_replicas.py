"""The ingest rate limit across replicas (SPEC section 9): two cloud-mode servers, real subprocesses
on their own ports, share the test database and one Redis (under a key prefix of this test's own).
One tenant's producer alternates between them; together they accept exactly the plan's limit in a
window. Then staff change the plan in Django admin, and the next request follows the new limit.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator

import orjson
import pytest
import requests
from django.contrib.auth import get_user_model

from billing.models import Plan
from tenants.services import api_key_create
from tests.conftest import scope_server
from tests.tenants.conftest import POSTGRES_ONLY, cloud_server_env

# The fixtures of the tenancy tests this one needs: the service role, and the cloud-mode client.
from tests.tenants.conftest import cloud as cloud
from tests.tenants.conftest import service_role as service_role

pytestmark = [*POSTGRES_ONLY, pytest.mark.django_db(transaction=True)]

LIMIT = 6
RAISED = 10
LOWERED = 4
# The limit's window is a fixed minute (shifted per tenant): with less than this left, the test
# waits for the next one, so that every request it counts falls in one window.
SECONDS_NEEDED = 15


@pytest.fixture
def metered(world) -> tuple[Plan, str]:
    """acme on a plan of its own with a low limit, and a producer's key of acme."""
    plan = Plan.objects.create(slug="metered", name="Metered", ingest_requests_per_minute=LIMIT)
    world.acme.plan = plan
    world.acme.save(update_fields=["plan"])
    _, key = api_key_create(tenant=world.acme, name="producer")
    return plan, key


@pytest.fixture
def replicas(service_role, metered) -> Iterator[tuple[str, str]]:
    env = cloud_server_env(service_role, KAHN_CACHE_KEY_PREFIX=f"kahn-test-{uuid.uuid4().hex}")
    with (
        scope_server(env, "--host", "127.0.0.1") as first,
        scope_server(env, "--host", "127.0.0.1") as second,
    ):
        yield first, second


class Producer:
    """Sends one run's start per request, each to the server it is given; keeps every answer."""

    def __init__(self, key: str) -> None:
        self.session = requests.Session()
        self.session.headers.update(
            {"Authorization": f"Bearer {key}", "Content-Type": "application/x-ndjson"}
        )
        self.numbers = itertools.count()
        self.answers: list[requests.Response] = []

    def send(self, server: str) -> requests.Response:
        run_id = f"run_{next(self.numbers)}"
        event = {"ts": "2026-11-20T10:00:00.000Z", "event": "run_start", "run_id": run_id}
        answer = self.session.post(
            f"{server}/api/v1/runs/{run_id}/events", data=orjson.dumps(event), timeout=10
        )
        assert answer.status_code in (200, 429), answer.text
        self.answers.append(answer)
        return answer

    def alternate(self, servers: tuple[str, str], count: int) -> list[int]:
        return [self.send(server).status_code for server in itertools.islice(itertools.cycle(servers), count)]


def change_limit_in_admin(admin, plan: Plan, limit: int) -> None:
    """Staff edit the plan in Django admin: the admin's own form, posted in this process."""
    form = {
        "slug": plan.slug,
        "name": plan.name,
        "retention_days": plan.retention_days,
        "hard_delete_after_days": plan.hard_delete_after_days,
        "ingest_requests_per_minute": limit,
        "max_api_keys": plan.max_api_keys,
    }
    response = admin.post(f"/admin/billing/plan/{plan.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    plan.refresh_from_db()
    assert plan.ingest_requests_per_minute == limit


@pytest.fixture
def admin(cloud):
    """A staff member signed in to this process's Django admin (cloud mode)."""
    staff = get_user_model().objects.create_user(
        "ops", email="ops@example.com", is_staff=True, is_superuser=True
    )
    cloud.force_login(staff)
    return cloud


def test_two_replicas_share_one_budget_and_follow_a_plan_change_made_in_admin(replicas, metered, admin):
    plan, key = metered
    producer = Producer(key)
    first = producer.send(replicas[0])
    assert first.status_code == 200
    if int(first.headers["X-RateLimit-Reset"]) < SECONDS_NEEDED:
        time.sleep(int(first.headers["X-RateLimit-Reset"]) + 1.5)
        producer.answers.clear()  # that one was the old window's: count from the fresh one

    # Alternating between the replicas, the window holds exactly the plan's limit.
    statuses = [a.status_code for a in producer.answers] + producer.alternate(
        replicas, 2 * LIMIT - len(producer.answers)
    )
    assert statuses == [200] * LIMIT + [429] * LIMIT
    by_server = {
        server: [a.status_code for a in producer.answers if a.url.startswith(server)] for server in replicas
    }
    assert all(200 in codes and 429 in codes for codes in by_server.values()), by_server  # both took part
    refused = producer.answers[-1]
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert [a.headers["X-RateLimit-Remaining"] for a in producer.answers][:LIMIT] == [
        str(LIMIT - n) for n in range(1, LIMIT + 1)
    ]

    # Raised in admin: the next request, on either replica, is accepted under the new limit, and the
    # window takes exactly the difference more (refused requests spent nothing).
    change_limit_in_admin(admin, plan, RAISED)
    statuses = producer.alternate(replicas[::-1], RAISED - LIMIT + 2)
    assert statuses == [200] * (RAISED - LIMIT) + [429] * 2
    assert producer.answers[-1].headers["X-RateLimit-Limit"] == str(RAISED)

    # Lowered below what the window already accepted: refused at once, by both.
    change_limit_in_admin(admin, plan, LOWERED)
    assert producer.alternate(replicas, 2) == [429, 429]
    assert producer.answers[-1].headers["X-RateLimit-Limit"] == str(LOWERED)

    # All of it happened in one window: its reset only ever counted down.
    resets = [int(a.headers["X-RateLimit-Reset"]) for a in producer.answers]
    assert resets == sorted(resets, reverse=True), resets
    assert sum(a.status_code == 200 for a in producer.answers) == RAISED
