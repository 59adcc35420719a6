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
from urllib.parse import urlencode

from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.urls import reverse

from tenants.context import NoTenantError, request_transaction, tenant_bound
from tenants.models import LOCAL_TENANT_SLUG, Tenant
from tenants.permissions import READ
from tenants.selectors import NotAMember, membership_list_for_user, tenant_chosen_for_user
from tenants.services import api_key_find, api_key_mark_used

logger = logging.getLogger(__name__)

# Where the cloud session keeps the tenant the user last switched to.
SESSION_TENANT_KEY = "kahn_tenant_id"
ORGANIZATION_HEADER = "X-Organization"
API_PREFIX = "/api/"


class _TenantMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def choose_tenant(self, request: HttpRequest) -> Tenant | HttpResponse | None:
        raise NotImplementedError

    def request_done(self, request: HttpRequest) -> None:
        """After the request's transaction: bookkeeping that an error answer must not roll back."""

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.tenant = None
        request.memberships = []
        request.membership = None
        with request_transaction() as atomic:
            chosen = self.choose_tenant(request)
            if isinstance(chosen, HttpResponse):
                return chosen
            request.tenant = chosen
            if chosen is not None:
                # The user's role in the chosen tenant; an API key is no one's membership.
                request.membership = next((m for m in request.memberships if m.tenant_id == chosen.pk), None)
            with tenant_bound(chosen, bound_in_database=getattr(request, "api_key", None) is not None):
                response = self.get_response(request)
            if atomic and response.status_code >= 400:
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
    """Cloud mode: the tenant of the request's API key, else of the logged-in user."""

    def choose_tenant(self, request: HttpRequest) -> Tenant | HttpResponse | None:
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            # The key's lookup binds its tenant in the database too (see `tenant_bound`).
            api_key = api_key_find(credentials.strip(), bind_tenant=True)
            if api_key is None:
                return _invalid_api_key()
            if not request.path.startswith(API_PREFIX) and not api_key.allows(READ):
                # The API's views check scopes themselves (tenants.permissions.HasScope); a page
                # only shows runs, so a key reaches one only if it may read them.
                return _insufficient_scope("pages show runs, and this API key may not read them (scope read)")
            request.api_key = api_key
            return api_key.tenant

        user = request.user
        if not user.is_authenticated:
            return None
        memberships = membership_list_for_user(user_id=user.pk)
        request.memberships = memberships
        try:
            return tenant_chosen_for_user(
                memberships=memberships,
                asked_slug=request.headers.get(ORGANIZATION_HEADER),
                session_tenant_id=request.session.get(SESSION_TENANT_KEY),
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
        # API views refuse before this point (tenants.api.HasTenant) and answer in their own shape.
        if not isinstance(exception, NoTenantError) or request.path.startswith(API_PREFIX):
            return None
        if not request.user.is_authenticated:
            login = reverse("oidc_authentication_init")
            return HttpResponseRedirect(f"{login}?{urlencode({'next': request.get_full_path()})}")
        return render(request, "tenants/no_workspace.html", status=200)


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


def _insufficient_scope(message: str) -> HttpResponse:
    body = {"error": {"code": "insufficient_scope", "message": message, "details": {"needed": READ}}}
    return JsonResponse(body, status=403)


def _forbidden(request: HttpRequest, message: str) -> HttpResponse:
    if request.path.startswith(API_PREFIX):
        # The error shape of SPEC section 11, with DRF's code for a 403.
        body = {"error": {"code": "permission_denied", "message": message, "details": {}}}
        return JsonResponse(body, status=403)
    return HttpResponseForbidden(message)
