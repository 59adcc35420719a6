"""Per-tenant ingest rate limits (SPEC section 9), counted in the shared cache.

The limit is the tenant's plan's `ingest_requests_per_minute`, read on every request, so a plan edited
in admin applies to the next request. The counts live in the Django cache, which is Redis in cloud
mode: every replica spends from the same budget.

A window is a fixed minute, each tenant's starting at a second of its own so that tenants' windows
do not all reset at once. Its count is kept under a key naming the window, never the plan's rate:
an edited plan moves the limit, not the count, and nobody gets past both limits in one window.

A window accepts at most the plan's limit, whatever the plan was earlier in it. A request spends
first and a refused one gives back what it spent, so the count is what was accepted: a producer
retrying while limited does not push its own reset further, and a raised limit lets exactly the
difference through. On Redis the spending, the check and the refund are one script
(`kahn_site.redis_cache.RedisCache.incr_within`): one round trip, and two replicas racing for the
last place cannot both take it.

When the cache cannot be reached the limit fails open: the request is served and a warning logged.
A producer's events are what this service exists to keep, and the database still holds each run's
lock; a limiter outage must not turn into lost runs across every tenant.
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import caches
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from kahn_site.redis_cache import RedisCache
from tenants.context import tenant_current

logger = logging.getLogger(__name__)

WRITE_METHODS = ("POST", "PUT")
WINDOW_SECONDS = 60
# A window's counter outlives its window by this much, so that it cannot expire while counted.
EXPIRY_MARGIN_SECONDS = 5
_USAGE = "kahn.ratelimit"


@dataclass(frozen=True)
class WindowUsage:
    limit: int
    count: int  # what the window accepted, this request included if it was
    time_left: int  # seconds until the window ends


def _window_end(tenant_pk: int, now: float) -> int:
    """When the tenant's current window ends (an epoch second): a fixed minute, shifted by a
    per-tenant offset."""
    second = int(now)
    offset = zlib.crc32(str(tenant_pk).encode()) % WINDOW_SECONDS
    end = second - second % WINDOW_SECONDS + offset
    return end + WINDOW_SECONDS if end < second else end


def _spend(key: str, limit: int, timeout: int) -> tuple[int, bool]:
    """Counts one request under `key` unless that passes `limit`: (the count, whether it counted)."""
    cache = caches["default"]
    if isinstance(cache, RedisCache):
        return cache.incr_within(key, limit=limit, timeout=timeout)
    # Any other cache (OSS with limits turned on: one process's memory): the same steps, one call
    # each; the same answers, as nothing else spends from a process's own memory meanwhile.
    cache.add(key, 0, timeout)
    count = cache.incr(key)
    if count <= limit:
        return count, True
    try:
        count = cache.decr(key)
    except Exception:
        logger.warning("a refused request's rate limit count was not given back", exc_info=True)
    return count, False


class TenantIngestRateThrottle(BaseThrottle):
    """A DRF throttle on the producer's writes: over the plan's rate, `429 rate_limited` with
    `Retry-After`; every counted response carries `X-RateLimit-Limit/-Remaining/-Reset`."""

    def allow_request(self, request: Request, view: Any) -> bool:
        if not settings.KAHN_RATE_LIMITS or request.method not in WRITE_METHODS:
            return True
        tenant = tenant_current()
        limit = tenant.plan.ingest_requests_per_minute
        now = time.time()
        end = _window_end(tenant.pk, now)
        time_left = end - int(now)
        try:
            count, allowed = _spend(
                f"ratelimit:ingest:{tenant.pk}:{end}", limit, time_left + EXPIRY_MARGIN_SECONDS
            )
        except Exception:
            logger.warning(
                "ingest rate limit not applied: the rate limit cache is unreachable", exc_info=True
            )
            return True
        request.META[_USAGE] = WindowUsage(limit=limit, count=count, time_left=time_left)
        self.time_left = max(time_left, 1)
        return allowed

    def wait(self) -> float:
        return float(self.time_left)


def ratelimit_headers(request: Request) -> dict[str, str]:
    usage: WindowUsage | None = request.META.get(_USAGE)
    if usage is None:
        return {}
    return {
        "X-RateLimit-Limit": str(usage.limit),
        "X-RateLimit-Remaining": str(max(usage.limit - usage.count, 0)),
        "X-RateLimit-Reset": str(max(usage.time_left, 0)),
    }
