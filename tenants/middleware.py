"""The tenant of each request, chosen once, then bound in code and in the database for the request.

OSS mode: the one `local` tenant. Cloud mode: the session user's tenant, chosen by the
`X-Organization` header, then the session's choice, then the first membership; a tenant the user
is not a member of is refused with 403. Either way the request is one `request_transaction` on
PostgreSQL: the tenant is found in it (an API key by its hash), then bound with `kahn.tenant_id` set,
so row-level security sees the same tenant as the code, and nothing of the tenant survives on the
connection after the request. A request answered with an error writes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib import import_module
from typing import TYPE_CHECKING, cast
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import auth
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from rest_framework.exceptions import NotAuthenticated
from rest_framework.permissions import SAFE_METHODS

from tenants.access_tokens import (
    AccessToken,
    InvalidAccessToken,
    ProviderUnavailable,
    access_token_verify,
    is_access_token,
    user_for_access_token,
)
from tenants.context import NoTenantError, request_transaction
from tenants.models import LOCAL_TENANT_SLUG, ApiKey, Membership, Tenant
from tenants.permissions import READ
from tenants.selectors import NotAMember, membership_list_for_user, tenant_chosen_for_user
from tenants.services import api_key_find, api_key_mark_used

if TYPE_CHECKING:
    from django.contrib.auth.models import User

logger = logging.getLogger(__name__)

# Where the cloud session keeps the tenant the user last switched to.
SESSION_TENANT_KEY = "kahn_tenant_id"
ORGANIZATION_HEADER = "X-Organization"
API_PREFIX = "/api/"


class TenantRequest(HttpRequest):
    """A request as the tenant middleware passes it on: what it sets, for the type checker."""

    tenant: Tenant | None
    memberships: list[Membership]  # the user's, in every tenant (cloud mode)
    membership: Membership | None  # the user's in `tenant`; an API key is no one's
    access_token: AccessToken | None  # cloud mode
    api_key: ApiKey  # cloud mode, on a request that carries one (read it with getattr)


class ManagerRequest(TenantRequest):
    """A request that `tenants.views.tenant_managers_only` let through: its user manages the tenant."""

    user: User
    membership: Membership


class _TenantMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def choose_tenant(self, request: TenantRequest) -> Tenant | HttpResponse | None:
        raise NotImplementedError

    def request_done(self, request: HttpRequest) -> None:
        """After the request's transaction: bookkeeping that an error answer must not roll back."""

    def __call__(self, request: TenantRequest) -> HttpResponse:
        request.tenant = None
        request.memberships = []
        request.membership = None
        with request_transaction() as unit:
            chosen = self.choose_tenant(request)
            if isinstance(chosen, HttpResponse):
                return chosen
            request.tenant = chosen
            if chosen is not None:
                # The user's role in the chosen tenant; an API key is no one's membership.
                request.membership = next((m for m in request.memberships if m.tenant_id == chosen.pk), None)
            with unit.bind(chosen, bound_by_key_lookup=getattr(request, "api_key", None) is not None):
                response = self.get_response(request)
            if unit.atomic and response.status_code >= 400:
                # A request answered with an error writes nothing: what a view wrote before it
                # refused (or failed) is rolled back with the request.
                transaction.set_rollback(True)
        self.request_done(request)
        return response


class LocalTenantMiddleware(_TenantMiddleware):
    """OSS mode: one operator on loopback, so every request acts for the one `local` tenant."""

    def choose_tenant(self, request: HttpRequest) -> Tenant:
        return Tenant.objects.get(slug=LOCAL_TENANT_SLUG)


class CloudTenantMiddleware(_TenantMiddleware):
    """Cloud mode: the tenant of the request's API key, else of the user of its access token (a
    machine client's), else of the logged-in user."""

    def __call__(self, request: TenantRequest) -> HttpResponse:
        request.access_token = None
        bearer = _bearer(request)
        if bearer is not None and is_access_token(bearer):
            # Checked before the request's transaction opens: checking may ask the provider, and a
            # database connection must not wait on that.
            refusal = _access_token_refusal(request, bearer)
            if refusal is not None:
                return refusal
        return super().__call__(request)

    def choose_tenant(self, request: TenantRequest) -> Tenant | HttpResponse | None:
        if request.access_token is not None:
            user = user_for_access_token(request.access_token)
            if user is None:
                return _forbidden(
                    request,
                    "The access token is valid, but nobody has signed in to Scope as its subject: "
                    "sign in once in a browser first.",
                )
            request.user = user
            return self.choose_tenant_for_user(request, session_tenant_id=None)

        bearer = _bearer(request)
        if bearer is not None:
            # The key's lookup binds its tenant in the database too (`RequestTransaction.bind`).
            api_key = api_key_find(bearer, bind_tenant=True)
            if api_key is None:
                return _invalid_api_key()
            if not request.path.startswith(API_PREFIX) and not api_key.allows(READ):
                # The API's views check scopes themselves (tenants.permissions.HasScope); a page
                # only shows runs, so a key reaches one only if it may read them.
                return _insufficient_scope("pages show runs, and this API key may not read them (scope read)")
            request.api_key = api_key
            return api_key.tenant

        if not request.user.is_authenticated:
            return None
        return self.choose_tenant_for_user(request, session_tenant_id=request.session.get(SESSION_TENANT_KEY))

    def choose_tenant_for_user(
        self, request: TenantRequest, *, session_tenant_id: object
    ) -> Tenant | HttpResponse | None:
        # A user who signed in, or the subject of an access token: never anonymous here.
        memberships = membership_list_for_user(user_id=cast(int, request.user.pk))
        request.memberships = memberships
        try:
            return tenant_chosen_for_user(
                memberships=memberships,
                asked_slug=request.headers.get(ORGANIZATION_HEADER),
                session_tenant_id=session_tenant_id,
            )
        except NotAMember as refusal:
            # The same answer whether the tenant exists or not: a header probes nothing.
            return _forbidden(request, str(refusal))

    def request_done(self, request: HttpRequest) -> None:
        api_key = getattr(request, "api_key", None)
        if api_key is None:
            return
        try:
            api_key_mark_used(api_key)
        except Exception:
            # The request's work is committed and its answer made: a failed note of the key's use
            # must not turn it into an error, which a producer would retry and store twice.
            logger.warning("could not record the use of API key %s", api_key.pk, exc_info=True)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """A view that needs a tenant, reached without one: sign in, or the "no workspace yet" page."""
        # API views refuse before this point (tenants.permissions.HasTenant) and answer in their own shape.
        if not isinstance(exception, NoTenantError) or request.path.startswith(API_PREFIX):
            return None
        if not request.user.is_authenticated:
            login = reverse("oidc_authentication_init")
            return HttpResponseRedirect(f"{login}?{urlencode({'next': request.get_full_path()})}")
        return render(request, "tenants/no_workspace.html", status=200)


def _bearer(request: HttpRequest) -> str | None:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


def cloud_credentials_refusal(request: TenantRequest) -> HttpResponse | None:
    """Cloud mode's check of a request that carries a body, made from its headers before the body
    is read (ingest.bodies, `KAHN_BODY_CREDENTIALS`): its refusal if it has no valid credentials,
    else None. The same checks the whole request meets later: an API key as `CloudTenantMiddleware`
    finds it, or else a signed-in session, as Django's own middleware loads it. Whether those
    credentials may do what the request asks is for the view to say, once the body is read.
    """
    bearer = _bearer(request)
    if bearer is not None and is_access_token(bearer):
        # A token never writes: its answer (401 if it is not valid, else 403) needs no body.
        return _access_token_refusal(request, bearer)
    if bearer is not None:
        return None if api_key_find(bearer) is not None else _invalid_api_key()
    session_key = request.COOKIES.get(settings.SESSION_COOKIE_NAME)
    if session_key:
        request.session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
        if auth.get_user(request).is_authenticated:
            return None
    # DRF's answer to the same request with no credentials (tenants.permissions.HasTenant).
    body = {
        "error": {"code": "not_authenticated", "message": str(NotAuthenticated.default_detail), "details": {}}
    }
    return JsonResponse(body, status=401, headers={"WWW-Authenticate": 'Bearer realm="kahn"'})


def _invalid_api_key() -> HttpResponse:
    # The same answer for a malformed, unknown, revoked or expired key: a key probes nothing.
    body = {
        "error": {
            "code": "invalid_api_key",
            "message": "the API key is not valid: it is malformed, unknown, revoked or expired",
            "details": {},
        }
    }
    return JsonResponse(body, status=401, headers={"WWW-Authenticate": 'Bearer realm="kahn"'})


def _access_token_refusal(request: TenantRequest, token: str) -> HttpResponse | None:
    """Verifies the request's access token into `request.access_token`; else the answer refusing it.

    A token reads the API and nothing else: runs are written by producers' API keys, and pages are
    for people, who sign in.
    """
    try:
        request.access_token = access_token_verify(token)
    except InvalidAccessToken as refusal:
        return _api_error(
            401,
            "invalid_token",
            str(refusal),
            headers={"WWW-Authenticate": 'Bearer realm="kahn", error="invalid_token"'},
        )
    except ProviderUnavailable as failure:
        logger.warning("an access token could not be checked: %s", failure)
        return _api_error(
            503,
            "provider_unavailable",
            "the identity provider could not be reached to check the access token; try again",
        )
    if not request.path.startswith(API_PREFIX) or request.method not in SAFE_METHODS:
        message = (
            "an access token only reads the API: runs are written with an API key, and pages are "
            "for people signed in"
        )
        return _api_error(
            403,
            "insufficient_scope",
            message,
            headers={"WWW-Authenticate": 'Bearer realm="kahn", error="insufficient_scope"'},
        )
    return None


def _api_error(
    status: int,
    code: str,
    message: str,
    *,
    details: dict[str, object] | None = None,
    headers: dict[str, str] | None = None,
) -> HttpResponse:
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return JsonResponse(body, status=status, headers=headers)


def _insufficient_scope(message: str) -> HttpResponse:
    return _api_error(403, "insufficient_scope", message, details={"needed": READ})


def _forbidden(request: HttpRequest, message: str) -> HttpResponse:
    if request.path.startswith(API_PREFIX):
        # The error shape of SPEC section 11, with DRF's code for a 403.
        body = {"error": {"code": "permission_denied", "message": message, "details": {}}}
        return JsonResponse(body, status=403)
    return HttpResponseForbidden(message)
