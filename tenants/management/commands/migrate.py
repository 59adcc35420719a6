"""`manage.py migrate`, run as the owner role in cloud mode.

With `DATABASE_OWNER_URL` set, the migrations run over a connection as that role (the owner of the
tables), and then the service role of `DATABASE_URL` is granted what it needs
(`tenants.database_roles`). Without it (OSS, or one role for both), this is Django's migrate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from django.conf import settings
from django.core.management.commands.migrate import Command as DjangoMigrate
from django.db import DEFAULT_DB_ALIAS, connections

from tenants.database_roles import database_grant_service_role

if TYPE_CHECKING:
    from django.db.backends.postgresql.base import DatabaseWrapper

CONNECTION_KEYS = ("NAME", "USER", "PASSWORD", "HOST", "PORT", "OPTIONS")


class Command(DjangoMigrate):
    help = f"{DjangoMigrate.help} In cloud mode, runs as DATABASE_OWNER_URL's role and grants DATABASE_URL's."

    def handle(self, *args: Any, **options: Any) -> None:
        owner = getattr(settings, "KAHN_DATABASE_OWNER", None)
        if not owner or options["database"] != DEFAULT_DB_ALIAS:
            super().handle(*args, **options)
            return
        connection = cast("DatabaseWrapper", connections[DEFAULT_DB_ALIAS])  # an owner: cloud, PostgreSQL
        service = {key: connection.settings_dict.get(key) for key in CONNECTION_KEYS}
        # This process only migrates: point its connection at the owner, then back at the service.
        # A pool (cloud mode) holds connections of the role it opened them as: close it each time.
        connection.close()
        connection.close_pool()
        connection.settings_dict.update({key: owner.get(key, service[key]) for key in CONNECTION_KEYS})
        try:
            super().handle(*args, **options)
            if service["USER"] and service["USER"] != owner.get("USER"):
                database_grant_service_role(connection, service["USER"])
                if options["verbosity"] >= 1:
                    self.stdout.write(f"Granted the service role {service['USER']} its privileges.")
        finally:
            connection.close()
            connection.close_pool()
            connection.settings_dict.update(service)
