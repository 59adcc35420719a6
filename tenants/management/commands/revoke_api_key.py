from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants.context import API_KEY_ID_SETTING, pre_tenant_lookup
from tenants.models import ApiKey
from tenants.services import api_key_revoke
from tenants.staff import staff_tenant_access


class Command(BaseCommand):
    help = "Revokes an API key at once, by the id `create_api_key` printed."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("key_id", type=int)
        parser.add_argument("--reason", default="an operator revoked an API key")

    def handle(self, *args: Any, **options: Any) -> None:
        key_id = options["key_id"]
        # The key's tenant is not known yet: find it through the key's id alone, then act in that
        # tenant through the audited staff path.
        with pre_tenant_lookup(API_KEY_ID_SETTING, str(key_id)):
            api_key = ApiKey.objects.pre_tenant_by_id(key_id).first()
        if api_key is None:
            raise CommandError(f"there is no API key {key_id}")
        with staff_tenant_access(
            tenant=api_key.tenant, actor="manage.py revoke_api_key", reason=options["reason"]
        ):
            api_key_revoke(api_key=api_key)
        self.stdout.write(
            f"revoked API key {api_key.pk} ({api_key.name}, …{api_key.last4}) of {api_key.tenant.slug}"
        )
