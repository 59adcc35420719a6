"""OIDC access tokens of machine clients (SPEC section 8): `Authorization: Bearer <token>`, where the
token is not an API key, on the read API and `/ws/live`.

- A JWT is verified here, by PyJWT, against the provider's key set (`OIDC_OP_JWKS_ENDPOINT`, kept by
  PyJWKClient and fetched again for a `kid` it does not hold), with the algorithm pinned to RS256, as
  the sign-in's, and `iss`, `aud`, `exp` and `nbf` checked.
- Any other token is asked about at the provider's RFC 7662 introspection endpoint, when one is set,
  with the sign-in's client credentials. The answer is kept in the cache (Redis in cloud mode, so
  every replica shares it) for the token's remaining life, at most 60 s: a token revoked at the
  provider stops working within that.

The token's `sub` is the user, as at sign-in (tenants.oidc); the tenant is then chosen as for a
session. A token only reads: the tenant middleware refuses it anything else, before any view runs.
Tokens are accepted when `OIDC_OP_ISSUER` and `OIDC_API_AUDIENCE` are set; until then every bearer
credential is an API key.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import jwt
import requests
from django.conf import settings
from django.contrib.auth.models import User
from django.core.cache import cache
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from tenants.models import Identity
from tenants.services import API_KEY_PREFIX

logger = logging.getLogger(__name__)

# The sign-in's algorithm (OIDC_RP_SIGN_ALGO): a token's own header never chooses how it is checked.
ALGORITHM = "RS256"
# Clocks of the provider and of Scope's hosts differ a little; a token is not refused for that.
CLOCK_SKEW_SECONDS = 30
# An introspection answer is trusted this long at most: the time a revocation takes to be seen.
INTROSPECTION_CACHE_SECONDS = 60
_INTROSPECTION_CACHE_PREFIX = "kahn:introspection:"
# The claims of an introspection answer that its checks read (RFC 7662 section 2.2).
_INTROSPECTION_CLAIMS = ("active", "sub", "exp", "nbf", "aud", "iss")


class InvalidAccessToken(Exception):
    """The token is not one Scope accepts; the message says why, for the client's operator."""


class ProviderUnavailable(Exception):
    """The provider could not be asked (its key set or its introspection endpoint): not the token's fault."""


@dataclass(frozen=True)
class AccessToken:
    """A verified token: whose it is (`sub`), and until when (epoch seconds; None: the provider
    gave no end)."""

    sub: str
    expires_at: float | None
    token: str = field(repr=False)


def access_tokens_enabled() -> bool:
    return bool(settings.OIDC_OP_ISSUER and settings.OIDC_API_AUDIENCE)


def is_access_token(credentials: str) -> bool:
    """Whether a bearer credential is to be checked as an access token: tokens are accepted, and it
    is not an API key (keys all start with the same prefix; a key that is not valid stays a key)."""
    return access_tokens_enabled() and not credentials.startswith(API_KEY_PREFIX)


def access_token_verify(token: str) -> AccessToken:
    """The verified token; raises `InvalidAccessToken` (say why) or `ProviderUnavailable`."""
    if not token:
        raise InvalidAccessToken("the access token is empty")
    # A JWS in compact form is three dot-separated parts; anything else is opaque to Scope.
    if token.count(".") == 2:
        return _jwt_verify(token)
    if settings.OIDC_OP_INTROSPECTION_ENDPOINT:
        return _introspection_verify(token)
    raise InvalidAccessToken(
        "the access token is not a JWT, and Scope has no introspection endpoint to ask about others"
    )


def user_for_access_token(access_token: AccessToken) -> User | None:
    """The active user the token's `sub` signed in as, or None: identity is by `sub` (tenants.oidc)."""
    identity = Identity.objects.select_related("user").filter(sub=access_token.sub).first()
    if identity is None or not identity.user.is_active:
        return None
    return identity.user


# ---------------------------------------------------------------- JWTs, verified locally


@functools.cache
def _jwks_client(uri: str, lifespan: float, cooldown: float, timeout: float) -> jwt.PyJWKClient:
    # One per process and endpoint: the key set it keeps is shared by every request and socket.
    return jwt.PyJWKClient(uri, lifespan=lifespan, cooldown_duration=cooldown, timeout=timeout)


def _jwt_verify(token: str) -> AccessToken:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as exc:
        raise InvalidAccessToken(f"the access token is not a well-formed JWT: {exc}") from None
    # Checked before any key is looked for: `none`, HS256 with the public key as secret and the like
    # are refused outright, and cost no fetch of the key set.
    # What the header says is the client's text: quoted in a refusal, never at length.
    if header.get("alg") != ALGORITHM:
        raise InvalidAccessToken(
            f"the access token is signed with {str(header.get('alg'))[:20]!r}; Scope accepts {ALGORITHM} only"
        )
    if not header.get("kid") or not isinstance(header["kid"], str):
        raise InvalidAccessToken("the access token's header names no key (kid)")
    client = _jwks_client(
        settings.OIDC_OP_JWKS_ENDPOINT,
        settings.OIDC_JWKS_CACHE_SECONDS,
        settings.OIDC_JWKS_REFETCH_COOLDOWN_SECONDS,
        getattr(settings, "OIDC_TIMEOUT", 10),
    )
    try:
        # Fetches the key set again, once, for a kid it does not hold (a key the provider rotated in).
        signing_key = client.get_signing_key(header["kid"])
    except jwt.PyJWKClientConnectionError as exc:
        raise ProviderUnavailable(f"the provider's key set could not be fetched: {exc}") from None
    except jwt.PyJWKClientError:
        raise InvalidAccessToken(
            f"no key of the provider has the access token's kid {header['kid'][:64]!r}"
        ) from None
    try:
        claims = jwt.decode(
            token,
            signing_key,
            algorithms=[ALGORITHM],
            audience=settings.OIDC_API_AUDIENCE,
            issuer=settings.OIDC_OP_ISSUER,
            leeway=CLOCK_SKEW_SECONDS,
            options={"require": ["exp", "iss", "aud", "sub"]},
        )
    except jwt.InvalidTokenError as exc:
        raise InvalidAccessToken(_jwt_refusal(exc)) from None
    if not isinstance(claims["sub"], str) or not claims["sub"]:
        raise InvalidAccessToken("the access token's sub is not a string")
    return AccessToken(sub=claims["sub"], expires_at=float(claims["exp"]), token=token)


def _jwt_refusal(exc: jwt.InvalidTokenError) -> str:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "the access token has expired"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "the access token is not valid yet (nbf)"
    if isinstance(exc, jwt.InvalidAudienceError):
        return f"the access token is not for this API (its aud is not {settings.OIDC_API_AUDIENCE!r})"
    if isinstance(exc, jwt.InvalidIssuerError):
        return f"the access token was not issued by {settings.OIDC_OP_ISSUER!r}"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "the access token's signature does not verify"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"the access token has no {exc.claim!r} claim"
    return f"the access token is not valid: {exc}"


# ---------------------------------------------------------------- opaque tokens, by introspection


def _introspection_verify(token: str) -> AccessToken:
    cache_key = _INTROSPECTION_CACHE_PREFIX + hashlib.sha256(token.encode()).hexdigest()
    answer = _cache_get(cache_key)
    if answer is None:
        answer = _introspect(token)
        lifetime = introspection_cache_seconds(answer, now=time.time())
        if lifetime > 0:
            _cache_set(cache_key, answer, lifetime)
    return _introspected_token(answer, token, now=time.time())


def introspection_cache_seconds(answer: dict[str, Any], *, now: float) -> int:
    """How long an answer may be kept: the token's remaining life, at most a minute; an inactive
    token stays inactive, so that answer is kept the minute too (junk costs the provider one ask)."""
    expires_at = answer.get("exp")
    if answer.get("active") is not True or not isinstance(expires_at, int | float):
        return INTROSPECTION_CACHE_SECONDS
    return max(0, min(INTROSPECTION_CACHE_SECONDS, int(expires_at - now)))


def _introspect(token: str) -> dict[str, Any]:
    # RFC 6749 2.3.1: client_secret_basic, each part form-encoded before it is joined.
    credentials = (quote(settings.OIDC_RP_CLIENT_ID, safe=""), quote(settings.OIDC_RP_CLIENT_SECRET, safe=""))
    try:
        response = requests.post(
            settings.OIDC_OP_INTROSPECTION_ENDPOINT,
            data={"token": token, "token_type_hint": "access_token"},
            auth=credentials,
            headers={"Accept": "application/json"},
            timeout=getattr(settings, "OIDC_TIMEOUT", 10),
            allow_redirects=False,
        )
        response.raise_for_status()
        answer = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise ProviderUnavailable(f"the provider's introspection endpoint did not answer: {exc}") from None
    if not isinstance(answer, dict):
        raise ProviderUnavailable("the provider's introspection endpoint did not answer with a JSON object")
    return {name: answer[name] for name in _INTROSPECTION_CLAIMS if name in answer}


def _introspected_token(answer: dict[str, Any], token: str, *, now: float) -> AccessToken:
    if answer.get("active") is not True:
        raise InvalidAccessToken("the provider says the access token is not active")
    audiences = answer.get("aud")
    audiences = [audiences] if isinstance(audiences, str) else audiences or []
    # RFC 7662 makes aud optional; Scope does not: a token for another API is not one for Scope.
    if settings.OIDC_API_AUDIENCE not in audiences:
        raise InvalidAccessToken(
            f"the access token is not for this API (its aud is not {settings.OIDC_API_AUDIENCE!r})"
        )
    if "iss" in answer and answer["iss"] != settings.OIDC_OP_ISSUER:
        raise InvalidAccessToken(f"the access token was not issued by {settings.OIDC_OP_ISSUER!r}")
    expires_at = answer.get("exp")
    if isinstance(expires_at, int | float) and expires_at <= now - CLOCK_SKEW_SECONDS:
        raise InvalidAccessToken("the access token has expired")
    not_before = answer.get("nbf")
    if isinstance(not_before, int | float) and not_before > now + CLOCK_SKEW_SECONDS:
        raise InvalidAccessToken("the access token is not valid yet (nbf)")
    sub = answer.get("sub")
    if not isinstance(sub, str) or not sub:
        raise InvalidAccessToken("the provider's answer about the access token names no sub")
    return AccessToken(
        sub=sub, expires_at=float(expires_at) if isinstance(expires_at, int | float) else None, token=token
    )


def _cache_get(key: str) -> dict[str, Any] | None:
    try:
        return cache.get(key)
    except Exception:
        # Without the cache every check asks the provider: slower, never wrong.
        logger.warning("the introspection cache could not be read", exc_info=True)
        return None


def _cache_set(key: str, answer: dict[str, Any], seconds: int) -> None:
    try:
        cache.set(key, answer, timeout=seconds)
    except Exception:
        logger.warning("the introspection cache could not be written", exc_info=True)


# ---------------------------------------------------------------- DRF


class AccessTokenAuthentication(BaseAuthentication):
    """DRF learns of the token the cloud tenant middleware verified (`request.access_token`), and of
    its user: such a request is the token's, whatever session cookie rides along."""

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        access_token = getattr(request._request, "access_token", None)
        if access_token is None:
            return None
        return request._request.user, access_token

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="kahn"'


class AccessTokenAuthenticationScheme(OpenApiAuthenticationExtension):
    """How the OpenAPI schema names the token: a bearer JWT (or opaque token) of the provider."""

    target_class = AccessTokenAuthentication
    name = "oidcAccessToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": (
                "an OIDC access token of the sign-in's provider, for this API's audience (reads only)"
            ),
        }
