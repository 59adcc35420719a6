"""The service's database role: what it may do, granted by the owner after every migration.

Cloud mode runs as two PostgreSQL roles (SPEC section 8). The owner (`DATABASE_OWNER_URL`) owns
every table and runs migrations. The service role (`DATABASE_URL`) owns nothing, is no superuser and
has no BYPASSRLS, so row-level security always applies to it; it gets only what it needs: reading
and writing rows. No TRUNCATE (it would bypass row-level security), no REFERENCES or TRIGGER, no DDL,
no writes to the migration history, and no changing or deleting the staff-access audit. The
README's "Cloud mode: database roles" shows the operator's part: creating the two roles and the
database.
"""

from __future__ import annotations

from django.db.backends.base.base import BaseDatabaseWrapper

# The migration history tells the service whether it may start (`kahn_site.checks`); only the owner
# writes it.
READ_ONLY_TABLES = ("django_migrations",)
# Audit records the service adds and reads but never rewrites (SPEC section 8): the staff-access
# record answers "who entered our data", so a compromised service cannot cover its tracks.
APPEND_ONLY_TABLES = ("tenants_staffaccess",)


def database_grant_service_role(connection: BaseDatabaseWrapper, role: str) -> None:
    """Grants `role` what the service needs on every table and sequence of the current schema.

    Idempotent, and run after each `migrate`, so tables added later are covered too.
    """
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_schema()")
        schema = quote(cursor.fetchone()[0])
        role_name = quote(role)
        cursor.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role_name}")
        cursor.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role_name}"
        )
        for table in READ_ONLY_TABLES:
            cursor.execute(f"REVOKE INSERT, UPDATE, DELETE ON {schema}.{quote(table)} FROM {role_name}")
        for table in APPEND_ONLY_TABLES:
            cursor.execute(f"REVOKE UPDATE, DELETE ON {schema}.{quote(table)} FROM {role_name}")
        cursor.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role_name}")
