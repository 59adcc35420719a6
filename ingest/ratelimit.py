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


def _window_usage(request: Request, *, spend: bool) -> dict[str, Any] | None:
    return get_usage(request, group=GROUP, key=_tenant_key, rate=WINDOW_RATE, increment=spend)


class TenantIngestRateThrottle(BaseThrottle):
    """A DRF throttle on the producer's writes: over the plan's rate, `429 rate_limited` with
    `Retry-After`; every counted response carries `X-RateLimit-Limit/-Remaining/-Reset`.

    A window accepts at most the plan's limit, whatever the plan was earlier in it. A refused request
    spends nothing, so the count is what was accepted: a producer retrying while limited does not push
    its own reset further, and a raised limit lets exactly the difference through.
    """

    def allow_request(self, request: Request, view: Any) -> bool:
        if not settings.KAHN_RATE_LIMITS or request.method not in WRITE_METHODS:
            return True
        limit = tenant_current().plan.ingest_requests_per_minute
        try:
            usage = _window_usage(request, spend=False)
            allowed = usage is not None and usage["count"] < limit
            if allowed:
                # Two replicas may both see the last place free; the count after spending says
                # which of them took it.
                usage = _window_usage(request, spend=True)
                allowed = usage is not None and usage["count"] <= limit
        except Exception:
            logger.warning(
                "ingest rate limit not applied: the rate limit cache is unreachable", exc_info=True
            )
            return True
        if usage is None:
            return True
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
