"""DRF's default permissions (settings.REST_FRAMEWORK): no API view runs without a current tenant,
and a credential does only what it may.

Its own module, as DRF imports its default permissions while `rest_framework.views` loads.
"""

from typing import Any

from rest_framework import status
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from kahn_site.api_errors import ApiError
from tenants.context import tenant_current_or_none

# `tenants.models.ApiKeyScope`'s values, spelled here: this module loads before the apps do.
INGEST, READ = "ingest", "read"
WHAT_SCOPE_ALLOWS = {INGEST: "send runs", READ: "read runs (the read API and live updates)"}


class HasTenant(BasePermission):
    message = "Sign in as a member of an organization, or send an API key."

    def has_permission(self, request: Request, view: Any) -> bool:
        return tenant_current_or_none() is not None


class InsufficientScope(ApiError):
    status_code = status.HTTP_403_FORBIDDEN
    code = "insufficient_scope"


def scope_needed(view: Any, method: str) -> str | None:
    """The API key scope a view's method needs: its `key_scopes` entry, else `read` for a read;
    None for a write the view names no scope for, which no API key may make."""
    declared = getattr(view, "key_scopes", {})
    if method in declared:
        return declared[method]
    return READ if method in SAFE_METHODS else None


class HasScope(BasePermission):
    """An API key acts within its scopes (`ingest`, `read`); runs are written by keys alone.

    Writing runs (`ingest`) is a producer's act: a browser session, whatever its role, is refused,
    so the UI only reflects what producers sent. A request with no credential at all reaches a view
    only with the tenant OSS gives every local request (cloud gives such a request none, and
    `HasTenant` refuses it first), so there it may do what the view does.
    """

    def has_permission(self, request: Request, view: Any) -> bool:
        needed = scope_needed(view, request.method or "GET")
        api_key = getattr(request._request, "api_key", None)
        if api_key is not None:
            if needed is None:
                raise InsufficientScope(
                    "an API key only sends runs (scope ingest) and reads them (scope read); "
                    "this needs a signed-in owner or admin",
                    details={"scopes": api_key.scopes.split()},
                )
            if not api_key.allows(needed):
                raise InsufficientScope(
                    f"this API key may not {WHAT_SCOPE_ALLOWS[needed]}: "
                    f"it needs the scope {needed}, and has {' and '.join(api_key.scopes.split())}",
                    details={"needed": needed, "scopes": api_key.scopes.split()},
                )
            return True
        if needed == INGEST and request.user.is_authenticated:
            raise InsufficientScope(
                "runs are written only by producers' API keys, never by a signed-in session: "
                "send them with a key that has the scope ingest",
                details={"needed": needed},
            )
        return True
