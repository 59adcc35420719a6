"""Who is on the other end of a WebSocket (`/ws/live`), decided once, at the handshake.

Sockets do not pass through the HTTP middlewares, so this does for a socket what the tenant
middlewares do for a request; settings choose which function runs (`KAHN_SOCKET_IDENTITY`):

- OSS: the one local tenant, as every request.
- Cloud: the API key sent as `Authorization: Bearer <key>` on the handshake, or a machine client's
  OIDC access token sent the same way (tenants.access_tokens), else the session's user; a token's or
  a session's user acts for the tenant chosen as for a page (`X-Organization`, then the session's
  choice, then the first membership). Anything else is refused with close code 4401 (4403 for a
  user who is not a member of the organization asked for, or of any).

Before any of that, `SiteOriginValidator` refuses the handshake (HTTP 403) of a socket that would
ride on the browser's cookie and does not come from one of the site's own origins; a socket that
sends its credential in `Authorization` needs no `Origin`, as no cookie speaks for it.

A socket ends when its credential does. Signing out and revoking a key close the credential's
sockets at once, through its group (`kahn_site.live_fanout.credential_group_for_*`); and every open socket
checks its credential again every KAHN_LIVE_RECHECK_SECONDS (`socket_identity_still_valid`) for
what has no moment of its own: a session that expires, a key past its expiry, a membership removed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.contrib import auth
from django.http import HttpRequest
from django.http.request import split_domain_port, validate_host
from django.utils import timezone

from kahn_site.live_fanout import (
    SOCKET_FORBIDDEN,
    SOCKET_UNAUTHENTICATED,
    SOCKET_UNAVAILABLE,
    credential_group_for_api_key,
    credential_group_for_session,
)
from tenants.access_tokens import (
    InvalidAccessToken,
    ProviderUnavailable,
    access_token_verify,
    is_access_token,
    user_for_access_token,
)
from tenants.context import tenant_atomic
from tenants.middleware import ORGANIZATION_HEADER, SESSION_TENANT_KEY
from tenants.models import LOCAL_TENANT_SLUG, ApiKey, ApiKeyScope, Tenant
from tenants.selectors import NotAMember, membership_list_for_user, tenant_chosen_for_user
from tenants.services import api_key_authenticate

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SocketIdentity:
    """The tenant a socket acts for, and the credential it was opened with (none in OSS)."""

    tenant: Tenant
    api_key_id: int | None = None
    session_key: str | None = None
    user_id: int | None = None
    # The access token the socket was opened with, checked again while the socket lasts.
    access_token: str | None = field(default=None, repr=False)

    @property
    def needs_recheck(self) -> bool:
        """Whether the socket's credential can end (every cloud credential can; OSS has none)."""
        return self.api_key_id is not None or self.session_key is not None or self.access_token is not None

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
    if scheme.lower() == "bearer" and is_access_token(credentials.strip()):
        return _access_token_socket_identity(scope, credentials.strip())
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


def _access_token_socket_identity(scope: dict[str, Any], token: str) -> SocketIdentity | SocketRefusal:
    try:
        access_token = access_token_verify(token)
    except InvalidAccessToken as refusal:
        return SocketRefusal(SOCKET_UNAUTHENTICATED, _close_reason(str(refusal)))
    except ProviderUnavailable as failure:
        logger.warning("a socket's access token could not be checked: %s", failure)
        return SocketRefusal(SOCKET_UNAVAILABLE, "the identity provider could not be reached; try again")
    user = user_for_access_token(access_token)
    if user is None:
        return SocketRefusal(SOCKET_FORBIDDEN, "nobody has signed in to Scope as the token's subject")
    memberships = membership_list_for_user(user_id=user.pk)
    try:
        tenant = tenant_chosen_for_user(
            memberships=memberships,
            asked_slug=_header(scope, ORGANIZATION_HEADER.lower().encode()),
            session_tenant_id=None,
        )
    except NotAMember as refusal:
        return SocketRefusal(SOCKET_FORBIDDEN, _close_reason(str(refusal)))
    if tenant is None:
        return SocketRefusal(SOCKET_FORBIDDEN, "the token's user is not a member of any organization yet")
    return SocketIdentity(tenant=tenant, user_id=user.pk, access_token=token)


def _close_reason(text: str) -> str:
    # A close frame's reason is at most 123 bytes (RFC 6455 5.5).
    return text.encode()[:123].decode(errors="ignore")


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
    if identity.access_token is not None:
        try:
            access_token = access_token_verify(identity.access_token)
        except InvalidAccessToken:
            return False  # expired, or (introspected) revoked at the provider
        except ProviderUnavailable:
            # Not the token's fault: it is checked again at the next round.
            logger.warning("a live socket's access token could not be checked again", exc_info=True)
            return True
        user = user_for_access_token(access_token)
        if user is None or user.pk != identity.user_id:
            return False
        memberships = membership_list_for_user(user_id=user.pk)
        return any(membership.tenant_id == identity.tenant.pk for membership in memberships)
    if identity.session_key is not None:
        # The same checks as a page's request: the session exists, is unexpired, and its
        # authentication hash still matches the user's.
        request = HttpRequest()
        request.session = import_module(settings.SESSION_ENGINE).SessionStore(
            session_key=identity.session_key
        )
        session_user = auth.get_user(request)
        if not session_user.is_authenticated or session_user.pk != identity.user_id:
            return False
        memberships = membership_list_for_user(user_id=session_user.pk)
        return any(membership.tenant_id == identity.tenant.pk for membership in memberships)
    return True


# ---------------------------------------------------------------- the handshake's Origin

_DEFAULT_PORTS = {"http": 80, "https": 443}


class SiteOriginValidator:
    """ASGI middleware of the WebSocket side: refuses the handshake (HTTP 403) of a socket that
    would act by the browser's cookie unless its `Origin` is one of the site's own (scheme, host and
    port, `site_origins`), so that a page of another origin cannot read a visitor's live feed.

    A socket that sends `Authorization: Bearer …` passes without an `Origin`: a page's script
    cannot set that header on a WebSocket, and such a socket acts by that credential alone
    (`cloud_socket_identity`), never by a cookie that rides along.
    """

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket" and not _sends_bearer(scope) and not origin_is_the_sites(scope):
            return await WebsocketDenier()(scope, receive, send)  # type: ignore[arg-type]  # channels' scope type
        return await self.application(scope, receive, send)


def _sends_bearer(scope: dict[str, Any]) -> bool:
    scheme, _, credentials = (_header(scope, b"authorization") or "").partition(" ")
    return scheme.lower() == "bearer" and bool(credentials.strip())


def origin_is_the_sites(scope: dict[str, Any]) -> bool:
    origin = _origin(_header(scope, b"origin") or "")
    return origin is not None and origin in site_origins(scope)


def site_origins(scope: dict[str, Any]) -> set[tuple[str, str, int]]:
    """The site's origins: KAHN_SITE_ORIGINS, and the one the handshake itself came to, as Django's
    CSRF check has it: the scheme it came by (behind the proxy, SECURE_PROXY_SSL_HEADER's) and its
    Host, if that is one of ALLOWED_HOSTS (a rebound DNS name is not the site)."""
    origins = {origin for origin in map(_origin, settings.KAHN_SITE_ORIGINS) if origin is not None}
    host = _header(scope, b"host") or ""
    domain, _ = split_domain_port(host)
    allowed_hosts = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed_hosts:
        allowed_hosts = [".localhost", "127.0.0.1", "[::1]"]  # as HttpRequest.get_host
    if domain and validate_host(domain, allowed_hosts):
        own = _origin(f"{'https' if _is_secure(scope) else 'http'}://{host}")
        if own is not None:
            origins.add(own)
    return origins


def _is_secure(scope: dict[str, Any]) -> bool:
    # As HttpRequest.is_secure: the proxy's header when it sent one, else the connection's scheme.
    if settings.SECURE_PROXY_SSL_HEADER:
        name, secure_value = settings.SECURE_PROXY_SSL_HEADER
        sent = _header(scope, name.removeprefix("HTTP_").replace("_", "-").lower().encode())
        if sent is not None:
            return sent.split(",", 1)[0].strip() == secure_value
    return scope.get("scheme") == "wss"


def _origin(value: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin, its port made explicit; None for what is not one."""
    parts = urlsplit(value.strip())
    try:
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, port or _DEFAULT_PORTS[parts.scheme]
