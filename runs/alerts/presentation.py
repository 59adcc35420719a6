"""A rule as the API and the Alerts page show it: never its URL or its secret (shown once, at creation)."""

from __future__ import annotations

from typing import Any

from runs.alerts.models import AlertRule, ChannelKind


def rule_data(rule: AlertRule) -> dict[str, Any]:
    channel: dict[str, Any] = {"kind": rule.channel_kind}
    if rule.channel_kind == ChannelKind.EMAIL:
        channel["to"] = list(rule.channel_to)
    filters = {k: v for k, v in (("run_id", rule.run_id_glob), ("node", rule.node)) if v}
    params = {
        k: v
        for k, v in (("factor", rule.factor), ("window", rule.window), ("threshold", rule.threshold))
        if v is not None
    }
    return {
        "id": rule.pk,
        "name": rule.name,
        "condition": rule.condition,
        "filter": filters,
        "params": params,
        "channel": channel,
        "enabled": rule.enabled,
        "cooldown_s": rule.cooldown_s,
        "created_at": rule.created_at.isoformat(),
    }
