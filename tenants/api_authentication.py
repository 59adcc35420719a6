"""DRF authentication for API keys. The key itself is checked once, by the cloud tenant middleware,
which binds its tenant for the whole request; here DRF learns of it, so that a request with no
credentials at all is answered 401 with `WWW-Authenticate: Bearer`, not 403."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AnonymousUser
from drf_spectacular.authentication import SessionScheme
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        api_key = getattr(request._request, "api_key", None)
        if api_key is None:
            return None
        return AnonymousUser(), api_key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="kahn"'


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """How the OpenAPI schema names the key: a bearer token."""

    target_class = ApiKeyAuthentication
    name = "apiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "an API key, kahn_live_sk_<prefix>_<secret>",
        }


class SessionAuthentication(authentication.SessionAuthentication):
    """DRF's session authentication, its CSRF check made on Django's request, not DRF's.

    DRF hands the check its own request, whose `POST` parses the body with the API's parsers: an
    NDJSON write from a session then failed as 415 before anyone asked whether a session may write
    at all. Django's request reads a form body only, so the `X-CSRFToken` header decides, whatever
    the body, and the session's write reaches its real answer (403 `insufficient_scope`).
    """

    def enforce_csrf(self, request: Request) -> None:
        super().enforce_csrf(request._request)  # type: ignore[arg-type]  # Django's request, on purpose


class SessionAuthenticationScheme(SessionScheme):
    """How the OpenAPI schema names the session: as DRF's, which this one is apart from its CSRF check."""

    target_class = SessionAuthentication  # type: ignore[assignment]  # a class, or a dotted path as in the base
