from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from kahn_site.checks import require_migrated
from tenants.services import TenancyError, tenant_create


class Command(BaseCommand):
    help = "Creates a tenant, optionally on a plan and with an owner (who signs in with that email)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="the tenant's slug: lowercase letters, digits, - and _")
        parser.add_argument("--name", default="", help="the name people see (default: the slug)")
        parser.add_argument("--plan", default=None, help="the plan's slug (default: the default plan)")
        parser.add_argument("--owner", default=None, metavar="EMAIL", help="make this person its owner")

    def handle(self, *args: Any, **options: Any) -> None:
        require_migrated()
        try:
            tenant = tenant_create(
                slug=options["slug"],
                name=options["name"],
                plan_slug=options["plan"],
                owner_email=options["owner"],
            )
        except TenancyError as exc:
            raise CommandError(str(exc)) from None
        except ValidationError as exc:
            raise CommandError(
                "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
            ) from None
        owner = f", owner {options['owner']}" if options["owner"] else ""
        self.stdout.write(
            f"created tenant {tenant.slug} ({tenant.name}) on plan {tenant.plan.slug}, "
            f"API key prefix {tenant.key_prefix}{owner}"
        )
