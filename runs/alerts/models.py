"""Alert rules, the notifications the write path records for them (the outbox), and every attempt
to deliver one. All tenant-owned, each row carrying `tenant_id` (row-level security, no joins).

A notification names its run by run id, not by a foreign key: retention may remove the run, and the
record of what was sent about it stays.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from tenants.models import Tenant
from tenants.scoping import TenantScopedManager


class Condition(models.TextChoices):
    RUN_FAILED = "run_failed"
    RUN_FLAKY = "run_flaky"
    RUN_INTERRUPTED = "run_interrupted"
    NODE_SLOW = "node_slow"
    NODE_FLAKY = "node_flaky"
    DIAGNOSTIC_ERROR = "diagnostic_error"


# The event `type` each condition sends (SPEC section 12).
EVENT_TYPE = {
    Condition.RUN_FAILED: "run.failed",
    Condition.RUN_FLAKY: "run.flaky",
    Condition.RUN_INTERRUPTED: "run.interrupted",
    Condition.NODE_SLOW: "node.slow",
    Condition.NODE_FLAKY: "node.flaky",
    Condition.DIAGNOSTIC_ERROR: "run.diagnostic",
}
NODE_CONDITIONS = (Condition.NODE_SLOW, Condition.NODE_FLAKY)
TEST_TYPE = "test"


class ChannelKind(models.TextChoices):
    WEBHOOK = "webhook"
    SLACK = "slack"
    EMAIL = "email"


class AlertRule(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="alert_rules")
    name = models.CharField(max_length=100)
    condition = models.CharField(max_length=20, choices=Condition.choices)
    # Filters: a glob on the run id (`nightly-*`), and a node id for node conditions; blank: any.
    run_id_glob = models.CharField(max_length=200, blank=True)
    node = models.CharField(max_length=200, blank=True)
    # Parameters of node conditions; null: the condition's default.
    factor = models.FloatField(null=True, blank=True)
    window = models.PositiveIntegerField(null=True, blank=True)
    threshold = models.FloatField(null=True, blank=True)
    channel_kind = models.CharField(max_length=10, choices=ChannelKind.choices)
    # Fernet tokens (runs.alerts.encryption): never the URL or the secret itself.
    channel_url_encrypted = models.TextField(blank=True)
    channel_secret_encrypted = models.TextField(blank=True)
    # Email addresses, which are not secrets.
    channel_to = models.JSONField(default=list, blank=True)
    enabled = models.BooleanField(default=True)
    cooldown_s = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    objects = TenantScopedManager["AlertRule"]()

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["tenant", "enabled"], name="alertrule_tenant_enabled")]

    def __str__(self) -> str:
        return f"{self.name} ({self.condition})"


class NotificationStatus(models.TextChoices):
    PENDING = "pending"
    DELIVERED = "delivered"
    # Retried for the whole retry period without a 2xx.
    FAILED = "failed"


class Notification(models.Model):
    """The outbox row: recorded in the transaction of the run change that caused it, sent after."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    # No database constraint: a rule removed while a writer records a notification of it must not
    # fail that writer's import at commit. Such a row is never read (every read joins its rule).
    rule = models.ForeignKey(
        AlertRule, on_delete=models.CASCADE, db_constraint=False, related_name="notifications"
    )
    run_id = models.CharField(max_length=64, blank=True)
    type = models.CharField(max_length=20)
    # The node of a node condition; blank (never null, so the unique key below holds) otherwise.
    node = models.CharField(max_length=200, blank=True)
    details = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)
    # The Standard Webhooks message id: the same on every attempt, so receivers can deduplicate.
    webhook_id = models.CharField(max_length=40)
    status = models.CharField(max_length=10, choices=NotificationStatus.choices, default="pending")
    next_attempt_at = models.DateTimeField(null=True, blank=True, default=timezone.now)
    attempts = models.PositiveIntegerField(default=0)

    objects = TenantScopedManager["Notification"]()

    class Meta:
        ordering = ["-created_at", "-id"]
        # Each with the tenant last: keys that can be distributed by tenant (tenants.sharding).
        constraints = [
            models.UniqueConstraint(
                fields=["rule", "run_id", "type", "node", "tenant"], name="notification_at_most_once"
            ),
            models.UniqueConstraint(fields=["webhook_id", "tenant"], name="notification_webhook_id_unique"),
        ]
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                name="notification_due",
                condition=models.Q(status="pending"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.run_id} {self.node}".strip()


class DeliveryAttempt(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    # On PostgreSQL the constraint includes the tenant (tenants.sharding), as between runs and diagnostics.
    notification = models.ForeignKey(
        Notification, on_delete=models.CASCADE, db_constraint=False, related_name="delivery_attempts"
    )
    at = models.DateTimeField(default=timezone.now)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    delivered = models.BooleanField(default=False)

    objects = TenantScopedManager["DeliveryAttempt"]()

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.notification_id} at {self.at}"


class NodeStats(models.Model):
    """A node's recent history, kept by the write path while the tenant has a node rule: the
    durations of its last successful attempts and whether it flaked in each of its last runs, so
    `node_slow` and `node_flaky` never read history again. Oldest first, at most MAX_WINDOW each."""

    MAX_WINDOW = 100

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    node_id = models.CharField(max_length=200)
    durations = models.JSONField(default=list)
    flakes = models.JSONField(default=list)

    objects = TenantScopedManager["NodeStats"]()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "node_id"], name="nodestats_one_per_node")]

    def __str__(self) -> str:
        return self.node_id
