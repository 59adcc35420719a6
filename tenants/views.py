"""Cloud pages of tenancy: the workspace switcher, "no workspace yet", sign-in recovery, sign-out,
and the workspace's API keys and members (owners and admins)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from functools import partial, wraps
from typing import Any
from urllib.parse import urlencode

import requests
from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import SuspiciousOperation
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCLogoutView

from kahn_site.live_fanout import SOCKET_UNAUTHENTICATED, credential_group_for_session, live_close_sockets
from tenants import selectors, services
from tenants.context import tenant_current
from tenants.middleware import SESSION_TENANT_KEY, ManagerRequest, TenantRequest
from tenants.models import ApiKeyScope, Membership, Role

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
def workspace_list(request: TenantRequest) -> HttpResponse:
    """The user's workspaces, to switch between; "no workspace yet" when there are none."""
    if not request.memberships:
        return render(request, "tenants/no_workspace.html")
    return render(request, "tenants/workspaces.html")


@require_POST
@login_required
def workspace_switch(request: TenantRequest) -> HttpResponse:
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


# ---------------------------------------------------------------- API keys (owners and admins)


def tenant_managers_only(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A page that changes the workspace itself: its owners and admins only; members get a 403 page."""

    @wraps(view)
    @login_required
    def guarded(request: TenantRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        tenant = tenant_current()  # no workspace yet: the middleware shows the "no workspace" page
        membership = request.membership
        if membership is None or not membership.manages_tenant:
            return render(request, "tenants/managers_only.html", {"tenant": tenant}, status=403)
        return view(request, *args, **kwargs)

    return guarded


def _refusal_status(refusal: services.TenancyError) -> int:
    if isinstance(refusal, services.NotAllowed):
        return 403
    if isinstance(refusal, services.LastOwner):
        return 409
    return 400


class ApiKeyCreateForm(forms.Form):
    name = forms.CharField(
        max_length=100,
        label="Name",
        help_text="what the key is for, e.g. the producer or CI job that sends runs with it",
        widget=forms.TextInput({"autocomplete": "off"}),
    )
    expires_on = forms.DateField(
        required=False,
        label="Expires on",
        help_text="optional; the key stops working at 00:00 UTC that day (to rotate with an overlap)",
        widget=forms.DateInput({"type": "date"}),
    )
    scopes = forms.MultipleChoiceField(
        required=False,
        label="Scopes",
        choices=ApiKeyScope.choices,
        help_text="what the key may do; none ticked means both",
        widget=forms.CheckboxSelectMultiple,
    )

    def clean_expires_on(self) -> date | None:
        expires_on = self.cleaned_data["expires_on"]
        if expires_on is not None and expires_on <= timezone.now().date():
            raise forms.ValidationError("Choose a day after today: the key would never work.")
        return expires_on

    def expires_at(self) -> datetime | None:
        expires_on = self.cleaned_data["expires_on"]
        return datetime.combine(expires_on, time.min, tzinfo=UTC) if expires_on else None


# The page carries a key in the clear once: no cache may keep it, so never_cache on every answer.
@never_cache
@require_http_methods(["GET", "POST"])
@tenant_managers_only
def api_keys(request: ManagerRequest) -> HttpResponse:
    """The workspace's keys, and a form for a new one, whose key this answer shows once.

    The new key is shown in the answer to the POST itself, not after a redirect: carrying it to a
    next page would mean storing it (in the session, in the database), and only its hash is stored.
    """
    tenant = tenant_current()
    form = ApiKeyCreateForm(request.POST or None)
    created: dict[str, Any] | None = None
    refusal = None
    if request.method == "POST" and form.is_valid():
        try:
            api_key, key = services.api_key_create(
                tenant=tenant,
                name=form.cleaned_data["name"],
                created_by=request.user,
                expires_at=form.expires_at(),
                scopes=form.cleaned_data["scopes"],
            )
        except services.TenancyError as exc:
            refusal = str(exc)
        else:
            created = {"api_key": api_key, "key": key}
            form = ApiKeyCreateForm()
    keys = selectors.api_key_list(tenant=tenant)
    now = timezone.now()
    for api_key in keys:
        api_key.state = (
            "revoked" if api_key.revoked_at else ("active" if api_key.is_active_at(now) else "expired")
        )
    # What the plan's limit counts (tenants.services.api_key_create): every key not revoked.
    in_use = sum(1 for api_key in keys if api_key.revoked_at is None)
    context = {
        "nav": "keys",
        "form": form,
        "created": created,
        "refusal": refusal,
        "keys": keys,
        "in_use": in_use,
        "plan": tenant.plan,
        "at_limit": in_use >= tenant.plan.max_api_keys,
    }
    return render(request, "tenants/api_keys.html", context)


@require_POST
@tenant_managers_only
def api_key_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    api_key = selectors.api_key_get(tenant=tenant_current(), key_id=key_id)
    if api_key is None:
        # Another workspace's key is answered exactly like a key that does not exist.
        raise Http404("There is no such API key in this workspace.")
    already = api_key.revoked_at is not None
    services.api_key_revoke(api_key=api_key)
    if already:
        messages.info(request, f"{api_key.name} (…{api_key.last4}) was already revoked.")
    else:
        messages.success(request, f"Revoked {api_key.name} (…{api_key.last4}): its next request is refused.")
    return redirect("api_keys")


# ---------------------------------------------------------------- members (owners and admins)


class MemberInviteForm(forms.Form):
    email = forms.EmailField(
        max_length=254,
        label="Email",
        help_text="they join at their first sign-in with this address, verified by the sign-in provider",
        widget=forms.EmailInput({"autocomplete": "off"}),
    )
    role = forms.ChoiceField(choices=Role.choices, initial=Role.MEMBER, label="Role")


def _members_page(
    request: HttpRequest,
    *,
    form: MemberInviteForm | None = None,
    refusal: str | None = None,
    status: int = 200,
) -> HttpResponse:
    tenant = tenant_current()
    memberships = selectors.membership_list(tenant=tenant)
    for membership in memberships:
        # A user with no login identity was invited by email and has not signed in yet.
        membership.signed_in = hasattr(membership.user, "identity")
    context = {
        "nav": "members",
        "form": form or MemberInviteForm(),
        "refusal": refusal,
        "memberships": memberships,
        "owners": sum(1 for m in memberships if m.role == Role.OWNER),
        "roles": Role.choices,
        "changes": selectors.membership_change_list(tenant=tenant),
    }
    return render(request, "tenants/members.html", context, status=status)


@never_cache
@require_http_methods(["GET", "POST"])
@tenant_managers_only
def members(request: ManagerRequest) -> HttpResponse:
    """The workspace's members and their roles, what changed, and a form to invite someone."""
    if request.method != "POST":
        return _members_page(request)
    form = MemberInviteForm(request.POST)
    if not form.is_valid():
        return _members_page(request, form=form, status=400)
    email, role = form.cleaned_data["email"], form.cleaned_data["role"]
    try:
        services.membership_invite(tenant=tenant_current(), email=email, role=role, by=request.membership)
    except services.TenancyError as refusal:
        return _members_page(request, form=form, refusal=str(refusal), status=_refusal_status(refusal))
    messages.success(
        request,
        f"Invited {email} as {role}: they join at their first verified sign-in, or now if they have one.",
    )
    return redirect("members")


def _membership_or_404(membership_id: int) -> Membership:
    membership = selectors.membership_get(tenant=tenant_current(), membership_id=membership_id)
    if membership is None:
        # Another workspace's member is answered exactly like one that does not exist.
        raise Http404("There is no such member in this workspace.")
    return membership


def _back_to_members(request: HttpRequest, *, still_manages: bool) -> HttpResponse:
    # Someone who just took themselves off the page (removed, or now a member) goes to the runs.
    return redirect("members" if still_manages else "history")


@require_POST
@tenant_managers_only
def member_role(request: ManagerRequest, membership_id: int) -> HttpResponse:
    membership = _membership_or_404(membership_id)
    role = request.POST.get("role", "")
    try:
        changed = services.membership_change_role(membership=membership, role=role, by=request.membership)
    except services.TenancyError as refusal:
        return _members_page(request, refusal=str(refusal), status=_refusal_status(refusal))
    messages.success(request, f"{services.person_label(changed.user)} is now {changed.role}.")
    mine = changed.pk == request.membership.pk
    return _back_to_members(request, still_manages=not mine or changed.manages_tenant)


@require_POST
@tenant_managers_only
def member_remove(request: ManagerRequest, membership_id: int) -> HttpResponse:
    membership = _membership_or_404(membership_id)
    try:
        services.membership_remove(membership=membership, by=request.membership)
    except services.TenancyError as refusal:
        return _members_page(request, refusal=str(refusal), status=_refusal_status(refusal))
    messages.success(
        request, f"Removed {services.person_label(membership.user)} from {membership.tenant.name}."
    )
    return _back_to_members(request, still_manages=membership.pk != request.membership.pk)
