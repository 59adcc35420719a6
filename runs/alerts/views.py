"""The Alerts page: the workspace's rules, a form for a new one (a webhook's secret shown once, in
the answer to that form), Send test, and the Deliveries list. Owners and admins in cloud mode;
anyone in OSS mode, where every local request acts for the one local tenant."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from runs.alerts import selectors, services
from runs.alerts.encryption import EncryptionKeyMissing
from runs.alerts.models import AlertRule, ChannelKind, Condition, NotificationStatus
from runs.alerts.presentation import rule_data
from tenants.context import tenant_current
from tenants.models import Tenant
from tenants.page_guards import managers_only_in_cloud

DELIVERIES_SHOWN = 50


class AlertRuleForm(forms.Form):
    name = forms.CharField(max_length=100, widget=forms.TextInput({"autocomplete": "off"}))
    condition = forms.ChoiceField(choices=Condition.choices)
    run_id = forms.CharField(
        required=False, max_length=200, label="Run id glob", help_text="optional, e.g. nightly-*"
    )
    node = forms.CharField(required=False, max_length=200, help_text="node conditions only; optional")
    channel_kind = forms.ChoiceField(choices=ChannelKind.choices, label="Channel")
    url = forms.CharField(required=False, max_length=2000, label="URL", help_text="webhook or Slack")
    to = forms.CharField(required=False, label="Email to", help_text="email: addresses, comma-separated")
    cooldown_s = forms.IntegerField(required=False, min_value=0, label="Cooldown (s)", initial=0)

    def body(self) -> dict[str, Any]:
        """The rule's body in the API's shape, for the one check both share."""
        data = self.cleaned_data
        channel: dict[str, Any] = {"kind": data["channel_kind"]}
        if data["channel_kind"] == ChannelKind.EMAIL:
            channel["to"] = [a.strip() for a in data["to"].split(",") if a.strip()]
        else:
            channel["url"] = data["url"]
        return {
            "name": data["name"],
            "condition": data["condition"],
            "filter": {"run_id": data["run_id"], "node": data["node"]},
            "channel": channel,
            "cooldown_s": data["cooldown_s"] or 0,
        }


FORM_FIELD = {
    "filter.run_id": "run_id",
    "filter.node": "node",
    "channel.kind": "channel_kind",
    "channel.url": "url",
}


# The answer to a new webhook rule carries its secret in the clear once: no cache may keep it.
@never_cache
@require_http_methods(["GET", "POST"])
@managers_only_in_cloud
def alerts_page(request: HttpRequest) -> HttpResponse:
    tenant = tenant_current()
    form = AlertRuleForm(request.POST or None)
    created: dict[str, Any] | None = None
    if request.method == "POST" and form.is_valid():
        try:
            spec = services.rule_spec_parse(form.body())
        except services.RuleInvalid as exc:
            for problem in exc.problems:
                name = FORM_FIELD.get(
                    problem["field"], "to" if problem["field"].startswith("channel.to") else None
                )
                form.add_error(name if name in form.fields else None, problem["message"])
        else:
            try:
                rule, secret = services.rule_create(tenant=tenant, spec=spec)
            except EncryptionKeyMissing as exc:
                form.add_error(None, str(exc))
            else:
                created = {"rule": rule, "secret": secret}
                form = AlertRuleForm()
    rules = [rule_data(rule) for rule in selectors.rule_list(tenant=tenant)]
    deliveries = list(
        selectors.notification_list(tenant=tenant).prefetch_related("delivery_attempts")[:DELIVERIES_SHOWN]
    )
    context = {
        "nav": "alerts",
        "form": form,
        "created": created,
        "rules": rules,
        "deliveries": deliveries,
        "statuses": NotificationStatus,
    }
    return render(request, "alerts/alerts.html", context, status=400 if form.errors else 200)


def _rule_or_404(tenant: Tenant, rule_id: int) -> AlertRule:
    rule = selectors.rule_get(tenant=tenant, rule_id=rule_id)
    if rule is None:
        raise Http404("There is no such alert rule in this workspace.")
    return rule


@require_POST
@managers_only_in_cloud
def alert_rule_test(request: HttpRequest, rule_id: int) -> HttpResponse:
    tenant = tenant_current()
    rule = _rule_or_404(tenant, rule_id)
    services.rule_send_test(tenant=tenant, rule=rule)
    messages.success(request, f"A test of “{rule.name}” is on its way: see Deliveries below.")
    return redirect("alerts")


@require_POST
@managers_only_in_cloud
def alert_rule_enabled(request: HttpRequest, rule_id: int) -> HttpResponse:
    """Turns a rule on or off: `enabled` is `on` or `off`, so that sending the form twice does
    what it did once."""
    tenant = tenant_current()
    rule = _rule_or_404(tenant, rule_id)
    wanted = request.POST.get("enabled")
    if wanted not in ("on", "off"):
        return HttpResponseBadRequest("enabled is on or off", content_type="text/plain; charset=utf-8")
    services.rule_enabled_set(tenant=tenant, rule=rule, enabled=wanted == "on")
    said = (
        "on: it records alerts again" if wanted == "on" else "off: it records nothing until it is turned on"
    )
    messages.info(request, f"The alert rule “{rule.name}” is {said}.")
    return redirect("alerts")


@require_POST
@managers_only_in_cloud
def alert_rule_delete(request: HttpRequest, rule_id: int) -> HttpResponse:
    tenant = tenant_current()
    rule = _rule_or_404(tenant, rule_id)
    services.rule_delete(tenant=tenant, rule=rule)
    messages.info(request, f"The alert rule “{rule.name}” is removed.")
    return redirect("alerts")
