from typing import Any

from django.conf import settings
from django.http import HttpRequest


def workspace(request: HttpRequest) -> dict[str, Any]:
    """What the page header's workspace switcher shows (tenants/account.html); nothing in OSS mode."""
    membership = getattr(request, "membership", None)
    return {
        "sign_in_enabled": settings.CLOUD,
        "current_tenant": getattr(request, "tenant", None),
        "memberships": getattr(request, "memberships", []),
        # Whether the header links the workspace's own pages (its API keys).
        "manages_tenant": membership is not None and membership.manages_tenant,
    }
