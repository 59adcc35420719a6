"""Per-tenant ingest rate limits (SPEC section 9), counted by django-ratelimit in the shared cache.

The limit is the tenant's plan's `ingest_requests_per_minute`, read on every request, so a plan edited
in admin applies to the next request. The counts live in the Django cache, which is Redis in cloud
mode: every replica spends from the same budget.

When the cache cannot be reached the limit fails open: the request is served and a warning logged.
A producer's events are what this service exists to keep, and the database still holds each run's
lock; a limiter outage must not turn into lost runs across every tenant.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django_ratelimit import core as ratelimit_core
from django_ratelimit.core import get_usage
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from tenants.context import tenant_current

logger = logging.getLogger(__name__)

GROUP = "kahn-ingest"
WRITE_METHODS = ("POST", "PUT")
# django-ratelimit names its counter after the rate it is given: counting under the plan's own rate
# would start a fresh count whenever the plan changes, letting a tenant past both limits in one window.
# The counter is kept under this fixed rate, of which only the period matters (the window: a minute);
# the plan's limit is compared with the count here, so an edited plan moves the limit, not the count.
WINDOW_RATE = "1/m"


def _tenant_key(group: str, request: Any) -> str:
    return str(tenant_current().pk)


def _window_spend(request: Request) -> dict[str, Any] | None:
    """Counts the request in its tenant's window and returns the window's usage: two round trips
    (django-ratelimit adds the window's counter, then increments it)."""
    return get_usage(request, group=GROUP, key=_tenant_key, rate=WINDOW_RATE, increment=True)


def _window_of(request: Request) -> int:
    """The window django-ratelimit spends from now, by its own helper (django-ratelimit counts up
    only, and a refund needs the counter's name; hence the pin to its minor version)."""
    _, period = ratelimit_core._split_rate(WINDOW_RATE)
    return ratelimit_core._get_window(_tenant_key(GROUP, request), period)


def _window_refund(request: Request, window: int) -> None:
    """Gives back what a refused request spent in `window`, so its count is what it accepted."""
    tenant = _tenant_key(GROUP, request)
    counter = ratelimit_core._make_cache_key(GROUP, window, WINDOW_RATE, tenant, ratelimit_core.ALL)
    caches[getattr(settings, "RATELIMIT_USE_CACHE", "default")].decr(counter)


class TenantIngestRateThrottle(BaseThrottle):
    """A DRF throttle on the producer's writes: over the plan's rate, `429 rate_limited` with
    `Retry-After`; every counted response carries `X-RateLimit-Limit/-Remaining/-Reset`.

    A window accepts at most the plan's limit, whatever the plan was earlier in it. A request spends
    first and a refused one gives back what it spent, so the count is what was accepted: a producer
    retrying while limited does not push its own reset further, and a raised limit lets exactly the
    difference through.
    """

    def allow_request(self, request: Request, view: Any) -> bool:
        if not settings.KAHN_RATE_LIMITS or request.method not in WRITE_METHODS:
            return True
        limit = tenant_current().plan.ingest_requests_per_minute
        try:
            window = _window_of(request)
            usage = _window_spend(request)
        except Exception:
            logger.warning(
                "ingest rate limit not applied: the rate limit cache is unreachable", exc_info=True
            )
            return True
        if usage is None:
            return True
        allowed = usage["count"] <= limit
        # Two replicas may both take the last place; the count after spending says which of them
        # got it, and the other gives its place back. Only to the window it spent from: if a new
        # window began meanwhile, which one it spent from is unknown, and it keeps its count
        # rather than lift the next window's limit.
        if not allowed and _window_of(request) == window:
            try:
                _window_refund(request, window)
                usage = {**usage, "count": usage["count"] - 1}
            except Exception:
                logger.warning("a refused request's rate limit count was not given back", exc_info=True)
        request.META["kahn.ratelimit"] = {**usage, "limit": limit}
        self.time_left = max(int(usage["time_left"]), 1)
        return allowed

    def wait(self) -> float:
        return float(self.time_left)


def ratelimit_headers(request: Request) -> dict[str, str]:
    usage = request.META.get("kahn.ratelimit")
    if not usage:
        return {}
    return {
        "X-RateLimit-Limit": str(usage["limit"]),
        "X-RateLimit-Remaining": str(max(usage["limit"] - usage["count"], 0)),
        "X-RateLimit-Reset": str(max(int(usage["time_left"]), 0)),
    }
