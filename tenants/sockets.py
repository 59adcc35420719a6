"""Who is on the other end of a WebSocket (`/ws/live`), decided once, at the handshake.

Sockets do not pass through the HTTP middlewares, so this does for a socket what the tenant
middlewares do for a request; settings choose which function runs (`KAHN_SOCKET_IDENTITY`):

- OSS: the one local tenant, as every request.
- Cloud: the API key sent as `Authorization: Bearer <key>` on the handshake, else the session's
  user, acting for the tenant chosen as for a page (`X-Organization`, then the session's choice,
  then the first membership). Anything else is refused with close code 4401 (4403 for a user who is
  not a member of the organization asked for, or of any, and for a key without the scope `read`).

A socket ends when its credential does. Signing out and revoking a key close the credential's
sockets at once, through its group (`kahn_site.live.credential_group_for_*`); and every open socket
checks its credential again every KAHN_LIVE_RECHECK_SECONDS (`socket_identity_still_valid`) for
what has no moment of its own: a session that expires, a key past its expiry, a membership removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib import auth
from django.http import HttpRequest
from django.utils import timezone

from kahn_site.live import (
    SOCKET_FORBIDDEN,
    SOCKET_UNAUTHENTICATED,
    credential_group_for_api_key,
    credential_group_for_session,
)
from tenants.context import tenant_atomic
from tenants.middleware import ORGANIZATION_HEADER, SESSION_TENANT_KEY
from tenants.models import LOCAL_TENANT_SLUG, ApiKey, ApiKeyScope, Tenant
from tenants.selectors import NotAMember, membership_list_for_user, tenant_chosen_for_user
from tenants.services import api_key_authenticate


@dataclass(frozen=True)
class SocketIdentity:
    """The tenant a socket acts for, and the credential it was opened with (none in OSS)."""

    tenant: Tenant
    api_key_id: int | None = None
    session_key: str | None = None
    user_id: int | None = None

    @property
    def credential_groups(self) -> list[str]:
        """The groups whose close message ends this socket."""
        groups = []
        if self.api_key_id is not None:
            groups.append(credential_group_for_api_key(self.api_key_id))
        if self.session_key is not None:
            groups.append(credential_group_for_session(self.session_key))
        return groups


@dataclass(frozen=True)
class SocketRefusal:
    code: int
    reason: str


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin1")
    return None


def local_socket_identity(scope: dict[str, Any]) -> SocketIdentity:
    """OSS: one operator on loopback, so every socket acts for the local tenant."""
    return SocketIdentity(tenant=Tenant.objects.get(slug=LOCAL_TENANT_SLUG))


def cloud_socket_identity(scope: dict[str, Any]) -> SocketIdentity | SocketRefusal:
    """Cloud: an API key on the handshake, else the signed-in session; else refused with 4401."""
    scheme, _, credentials = (_header(scope, b"authorization") or "").partition(" ")
    if scheme.lower() == "bearer":
        api_key = api_key_authenticate(credentials.strip())
        if api_key is None:
            # The same answer for a malformed, unknown, revoked or expired key, as over HTTP.
            return SocketRefusal(SOCKET_UNAUTHENTICATED, "the API key is not valid")
        if not api_key.allows(ApiKeyScope.READ):
            # As over HTTP: 403 insufficient_scope (here 4403, its code in the reason).
            return SocketRefusal(
                SOCKET_FORBIDDEN, "insufficient_scope: live updates need an API key with the scope read"
            )
        return SocketIdentity(tenant=api_key.tenant, api_key_id=api_key.pk)

    user = scope.get("user")
    session = scope.get("session")
    if user is None or not user.is_authenticated or session is None or not session.session_key:
        return SocketRefusal(SOCKET_UNAUTHENTICATED, "sign in, or send an API key")
    try:
        tenant = tenant_chosen_for_user(
            memberships=membership_list_for_user(user_id=user.pk),
            asked_slug=_header(scope, ORGANIZATION_HEADER.lower().encode()),
            session_tenant_id=session.get(SESSION_TENANT_KEY),
        )
    except NotAMember as refusal:
        return SocketRefusal(SOCKET_FORBIDDEN, str(refusal))
    if tenant is None:
        return SocketRefusal(SOCKET_FORBIDDEN, "you are not a member of any organization yet")
    return SocketIdentity(tenant=tenant, session_key=session.session_key, user_id=user.pk)


def socket_identity(scope: dict[str, Any]) -> SocketIdentity | SocketRefusal:
    """The identity of a new socket, by the mode's function (settings.KAHN_SOCKET_IDENTITY)."""
    module, _, name = settings.KAHN_SOCKET_IDENTITY.rpartition(".")
    return getattr(import_module(module), name)(scope)


def socket_identity_still_valid(identity: SocketIdentity) -> bool:
    """Whether the socket's credential still holds: its key active, its session signed in as the
    same user, who is still a member of the socket's tenant."""
    if identity.api_key_id is not None:
        with tenant_atomic(identity.tenant):
            api_key = ApiKey.objects.filter(tenant=identity.tenant, pk=identity.api_key_id).first()
        return api_key is not None and api_key.is_active_at(timezone.now())
    if identity.session_key is not None:
        # The same checks as a page's request: the session exists, is unexpired, and its
        # authentication hash still matches the user's.
        request = HttpRequest()
        request.session = import_module(settings.SESSION_ENGINE).SessionStore(
            session_key=identity.session_key
        )
        user = auth.get_user(request)
        if not user.is_authenticated or user.pk != identity.user_id:
            return False
        memberships = membership_list_for_user(user_id=user.pk)
        return any(membership.tenant_id == identity.tenant.pk for membership in memberships)
    return True
