from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from tenants.models import ApiKeyScope, Tenant
from tenants.services import TenancyError, api_key_create


class Command(BaseCommand):
    help = "Makes an API key for a tenant's producers and prints it, once: only its hash is kept."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="the tenant")
        parser.add_argument("--name", default="producer", help="what the key is for")
        parser.add_argument("--expires-in-days", type=int, help="for rotation: the key stops working then")
        parser.add_argument(
            "--scope",
            action="append",
            dest="scopes",
            default=[],
            choices=ApiKeyScope.values,
            help="what the key may do: ingest (send runs), read (the read API and /ws/live); "
            "repeat for both; none given means both",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            tenant = Tenant.objects.select_related("plan").get(slug=options["slug"])
        except Tenant.DoesNotExist:
            raise CommandError(f"there is no tenant {options['slug']!r}") from None
        days = options["expires_in_days"]
        if days is not None and days <= 0:
            raise CommandError("--expires-in-days must be a positive number of days")
        expires_at = timezone.now() + timedelta(days=days) if days else None
        try:
            api_key, key = api_key_create(
                tenant=tenant, name=options["name"], expires_at=expires_at, scopes=options["scopes"]
            )
        except TenancyError as exc:
            raise CommandError(str(exc)) from None
        self.stderr.write(
            f"API key {api_key.pk} ({api_key.name}, scopes {api_key.scopes.replace(' ', ', ')}) "
            f"for {tenant.slug}: shown this once, keep it safe"
        )
        self.stdout.write(key)
