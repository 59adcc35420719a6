"""`manage.py alerts_rotate_key`: re-encrypts every alert channel's URL and secret with the first key
of KAHN_ENCRYPTION_KEY, so that the keys after it can be retired."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from kahn_site.checks import require_migrated
from runs.alerts.services import channel_secrets_rotate
from tenants.context import tenant_atomic
from tenants.models import Tenant


class Command(BaseCommand):
    help = "Re-encrypts alert channels' URLs and secrets with the first key of KAHN_ENCRYPTION_KEY."

    def handle(self, *args: Any, **options: Any) -> None:
        require_migrated()
        total = 0
        for tenant in Tenant.objects.order_by("pk"):
            with tenant_atomic(tenant):
                total += channel_secrets_rotate(tenant=tenant)
        self.stdout.write(f"{total} alert rule{'s' if total != 1 else ''} re-encrypted with the first key")
