"""Per-tenant ingest rate limits from the plan (SPEC section 9), counted in real Redis."""

import logging
import uuid

import orjson
import pytest
from django.test import override_settings

pytestmark = pytest.mark.django_db

T = "2026-11-20T10:00:00.000Z"


def redis_cache(location: str = "redis://127.0.0.1:6379/0") -> dict:
    # A fresh key prefix per test: counts of other tests and other runs never mix in.
    return {
        "default": {
            "BACKEND": "kahn_site.redis_cache.RedisCache",  # cloud mode's own
            "LOCATION": location,
            "KEY_PREFIX": f"kahn-test-{uuid.uuid4().hex}",
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }


def note(client, run_id: str = "limited"):
    event = {"ts": T, "event": "run_start", "run_id": run_id}
    return client.post(
        f"/api/v1/runs/{run_id}/events", data=orjson.dumps([event]), content_type="application/json"
    )


@pytest.fixture
def plan_of_three(local_tenant):
    plan = local_tenant.plan
    plan.ingest_requests_per_minute = 3
    plan.save()
    return plan


def test_over_the_plan_rate_is_429_rate_limited_with_headers(client, plan_of_three):
    with override_settings(KAHN_RATE_LIMITS=True, CACHES=redis_cache()):
        answers = [note(client, f"r{i}") for i in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert [a["X-RateLimit-Remaining"] for a in answers[:3]] == ["2", "1", "0"]
        assert all(a["X-RateLimit-Limit"] == "3" for a in answers)
        limited = answers[3]
        assert limited.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(limited["Retry-After"]) <= 60
        assert 0 <= int(limited["X-RateLimit-Reset"]) <= 60
        # Reads on the same paths spend nothing.
        assert client.get("/api/v1/runs/r0/events").status_code == 200


def test_a_plan_change_moves_the_limit_of_the_window_not_its_count(client, plan_of_three):
    with override_settings(KAHN_RATE_LIMITS=True, CACHES=redis_cache()):
        assert [note(client, f"r{i}").status_code for i in range(5)] == [200, 200, 200, 429, 429]
        # Raised: the refused requests spent nothing, so exactly the difference gets through.
        plan_of_three.ingest_requests_per_minute = 6
        plan_of_three.save()
        answers = [note(client, f"s{i}") for i in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert [a["X-RateLimit-Remaining"] for a in answers] == ["2", "1", "0", "0"]
        assert all(a["X-RateLimit-Limit"] == "6" for a in answers)
        # Lowered below what the window already accepted: the very next request is refused.
        plan_of_three.ingest_requests_per_minute = 2
        plan_of_three.save()
        assert note(client, "t0").status_code == 429


def test_with_redis_down_the_limit_fails_open_and_says_so(client, plan_of_three, caplog):
    # Port 1 on loopback: nothing listens there, so every cache call fails as in an outage.
    with (
        override_settings(KAHN_RATE_LIMITS=True, CACHES=redis_cache("redis://127.0.0.1:1/0")),
        caplog.at_level(logging.WARNING, logger="ingest.ratelimit"),
    ):
        answers = [note(client, f"r{i}") for i in range(5)]
    assert [a.status_code for a in answers] == [200] * 5
    assert "X-RateLimit-Limit" not in answers[0]
    assert "rate limit cache is unreachable" in caplog.text


def test_the_cloud_cache_builds_one_redis_client_per_pool_not_one_per_call():
    from django.core.cache import caches

    with override_settings(CACHES=redis_cache()):
        cache = caches["default"]
        assert cache.add("counted", 0, 60) and cache.incr("counted") == 1
        assert cache._cache.get_client() is cache._cache.get_client()
        assert cache._cache.get_client(write=True) is cache._cache.get_client("counted", write=True)


def test_oss_mode_has_no_limit(client, plan_of_three):
    assert [note(client, f"r{i}").status_code for i in range(5)] == [200] * 5


def test_the_cloud_cache_counts_only_keys_that_exist():
    # Django's contract for incr, kept by the one-round-trip script: a missing key is an error, never
    # a counter made without an expiry (which would count forever).
    from django.core.cache import caches

    with override_settings(CACHES=redis_cache()):
        cache = caches["default"]
        with pytest.raises(ValueError, match="not found"):
            cache.incr("never-added")
        assert cache.get("never-added") is None
        assert cache.add("added", 5, 60)
        assert cache.incr("added") == 6
        assert cache.incr("added", 4) == 10
        assert cache.decr("added", 3) == 7
        assert 0 < cache._cache.get_client().ttl(cache.make_key("added")) <= 60


def test_without_redis_the_limit_counts_the_same_in_the_process_memory(client, plan_of_three):
    # OSS with limits turned on: no Redis, the cache is the process's own memory.
    memory = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": uuid.uuid4().hex}
    }
    with override_settings(KAHN_RATE_LIMITS=True, CACHES=memory):
        answers = [note(client, f"r{i}") for i in range(5)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429, 429]
        assert [a["X-RateLimit-Remaining"] for a in answers] == ["2", "1", "0", "0", "0"]
        plan_of_three.ingest_requests_per_minute = 4
        plan_of_three.save()
        assert [note(client, f"s{i}").status_code for i in range(2)] == [200, 429]


def test_replicas_racing_for_a_window_take_exactly_its_limit():
    # Counting, checking and giving back are one script in Redis: of many at once, exactly the
    # limit's worth count, and the count is what they were.
    from concurrent.futures import ThreadPoolExecutor

    from django.core.cache import caches

    with override_settings(CACHES=redis_cache()):
        cache = caches["default"]
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda _: cache.incr_within("window", limit=5, timeout=60), range(40)))
        assert sum(counted for _, counted in answers) == 5
        assert sorted(count for count, counted in answers if counted) == [1, 2, 3, 4, 5]
        assert all(count == 5 for count, counted in answers if not counted)
        assert cache.get("window") == 5
        assert 0 < cache._cache.get_client().ttl(cache.make_key("window")) <= 60
