"""Reads of alerts: a tenant's rules and its notifications (the Deliveries list)."""

from __future__ import annotations

from django.db.models import QuerySet

from runs.alerts.models import AlertRule, Notification
from tenants.models import Tenant


def rule_list(*, tenant: Tenant) -> QuerySet[AlertRule]:
    return AlertRule.objects.filter(tenant=tenant).order_by("created_at", "id")


def rule_get(*, tenant: Tenant, rule_id: int) -> AlertRule | None:
    return AlertRule.objects.filter(tenant=tenant, pk=rule_id).first()


def notification_list(
    *, tenant: Tenant, rule: int | None = None, run_id: str | None = None, status: str | None = None
) -> QuerySet[Notification]:
    """The tenant's notifications, newest first, with their rule."""
    notifications = Notification.objects.filter(tenant=tenant).select_related("rule").order_by("-id")
    if rule is not None:
        notifications = notifications.filter(rule_id=rule)
    if run_id is not None:
        notifications = notifications.filter(run_id=run_id)
    if status is not None:
        notifications = notifications.filter(status=status)
    return notifications
