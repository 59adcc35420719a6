"""Cloud pages of tenancy: the workspace switcher, "no workspace yet", sign-in recovery, sign-out."""

from __future__ import annotations

import logging
from functools import partial
from urllib.parse import urlencode

import requests
from django.contrib.auth.decorators import login_required
from django.core.exceptions import SuspiciousOperation
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCLogoutView

from kahn_site.live import SOCKET_UNAUTHENTICATED, credential_group_for_session, live_close_sockets
from tenants.middleware import SESSION_TENANT_KEY

logger = logging.getLogger(__name__)

# Failed callbacks in a row after which the user sees a page instead of yet another redirect.
SIGN_IN_ATTEMPTS_KEY = "kahn_sign_in_attempts"
MAX_SIGN_IN_ATTEMPTS = 3


def _sign_in_url(next_url: str | None) -> str:
    url = reverse("oidc_authentication_init")
    return f"{url}?{urlencode({'next': next_url})}" if next_url else url


class SignInCallbackView(OIDCAuthenticationCallbackView):
    """The OIDC callback, where a replayed or stale callback ends in a fresh sign-in, not a 400/500.

    A replayed callback carries a state this session no longer has (mozilla-django-oidc raises
    SuspiciousOperation) or a code the provider already redeemed (the token request fails).
    Either way the person only wants to be signed in: start again, a bounded number of times.
    """

    def get(self, request: HttpRequest) -> HttpResponse:
        try:
            return super().get(request)
        except (SuspiciousOperation, requests.RequestException) as exc:
            logger.info("sign-in callback not usable (%s): starting a fresh sign-in", exc)
            return self.login_failure()

    def login_success(self) -> HttpResponse:
        self.request.session.pop(SIGN_IN_ATTEMPTS_KEY, None)
        return super().login_success()

    def login_failure(self) -> HttpResponse:
        request = self.request
        attempts = request.session.get(SIGN_IN_ATTEMPTS_KEY, 0) + 1
        declined = request.GET.get("error")
        if declined or attempts > MAX_SIGN_IN_ATTEMPTS:
            request.session.pop(SIGN_IN_ATTEMPTS_KEY, None)
            context = {
                "declined": declined,
                "sign_in_url": _sign_in_url(request.session.get("oidc_login_next")),
            }
            return render(request, "tenants/sign_in_failed.html", context)
        request.session[SIGN_IN_ATTEMPTS_KEY] = attempts
        return HttpResponseRedirect(_sign_in_url(request.session.get("oidc_login_next")))


class SignOutView(OIDCLogoutView):
    """Signing out also closes the session's live sockets (`/ws/live`), in every replica."""

    def post(self, request: HttpRequest) -> HttpResponse:
        session_key = request.session.session_key
        response = super().post(request)
        if session_key:
            # After the session's deletion is committed, as the sockets' own checks read it.
            transaction.on_commit(
                partial(
                    live_close_sockets,
                    credential_group_for_session(session_key),
                    code=SOCKET_UNAUTHENTICATED,
                    reason="signed out",
                ),
                robust=True,
            )
        return response


@require_GET
@login_required
def workspace_list(request: HttpRequest) -> HttpResponse:
    """The user's workspaces, to switch between; "no workspace yet" when there are none."""
    if not request.memberships:
        return render(request, "tenants/no_workspace.html")
    return render(request, "tenants/workspaces.html")


@require_POST
@login_required
def workspace_switch(request: HttpRequest) -> HttpResponse:
    slug = request.POST.get("tenant", "")
    chosen = next((m.tenant for m in request.memberships if m.tenant.slug == slug), None)
    if chosen is None:
        return render(
            request,
            "tenants/workspaces.html",
            {"error": "You are not a member of that workspace."},
            status=403,
        )
    request.session[SESSION_TENANT_KEY] = chosen.pk
    next_url = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(next_url, allowed_hosts={request.get_host()}):
        next_url = reverse("history")
    return redirect(next_url)


@require_GET
def signed_out(request: HttpRequest) -> HttpResponse:
    return render(request, "tenants/signed_out.html", {"sign_in_url": _sign_in_url(reverse("history"))})


def staff_sign_in(request: HttpRequest) -> HttpResponse:
    """Django admin's login page in cloud mode: staff sign in with OIDC like everyone else."""
    next_url = request.GET.get("next") or reverse("admin:index")
    if request.user.is_authenticated:
        # Signed in but not staff: another sign-in would only come back here.
        return render(request, "tenants/not_staff.html", status=403)
    return HttpResponseRedirect(_sign_in_url(next_url))
