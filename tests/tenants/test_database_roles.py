"""The two database roles of cloud mode, made as an operator would (README, "Cloud mode: database
roles"), on a fresh database: migrations run as the owner, the service role owns nothing and is
held by row-level security. And OSS mode on PostgreSQL, where one non-superuser role owns the
tables and FORCE holds it to the same policies."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
import requests

from tests.conftest import PROJECT, manage, manage_env
from tests.servers import free_port
from tests.tenants.conftest import POSTGRES_ONLY

pytestmark = POSTGRES_ONLY

SERVER = "postgres@127.0.0.1:5432"
DEMO_ARCHIVE = PROJECT / "ingest" / "demo_archive"


@dataclass(frozen=True)
class Database:
    name: str
    owner: str
    service: str

    def url(self, role: str) -> str:
        return f"postgres://{role}@127.0.0.1:5432/{self.name}"

    def connect(self, role: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(f"postgresql://{role}@127.0.0.1:5432/{self.name}", autocommit=True)


@pytest.fixture
def fresh_database() -> Iterator[Database]:
    """A new database owned by a new, unprivileged owner role, and a service role beside it."""
    stem = f"kahn_roles_{secrets.token_hex(4)}"
    database = Database(name=stem, owner=f"{stem}_owner", service=f"{stem}_service")
    with psycopg.connect(f"postgresql://{SERVER}/postgres", autocommit=True) as admin:
        # The README's operator step, word for word but the names.
        admin.execute(f"CREATE ROLE {database.owner} LOGIN")
        admin.execute(f"CREATE ROLE {database.service} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE")
        admin.execute(f"CREATE DATABASE {database.name} OWNER {database.owner}")
    try:
        yield database
    finally:
        with psycopg.connect(f"postgresql://{SERVER}/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {database.name} WITH (FORCE)")
            admin.execute(f"DROP ROLE IF EXISTS {database.service}")
            admin.execute(f"DROP ROLE IF EXISTS {database.owner}")


def cloud_env(database: Database) -> dict[str, str]:
    return manage_env(
        KAHN_MODE="cloud",
        DATABASE_URL=database.url(database.service),
        DATABASE_OWNER_URL=database.url(database.owner),
        DJANGO_SECRET_KEY="roles-tests-" + "x" * 40,
        REDIS_URL="redis://127.0.0.1:6379/15",
        OIDC_RP_CLIENT_ID="kahn-scope",
        OIDC_RP_CLIENT_SECRET="secret",
        OIDC_OP_AUTHORIZATION_ENDPOINT="https://airlock.example/authorize",
        OIDC_OP_TOKEN_ENDPOINT="https://airlock.example/token",
        OIDC_OP_USER_ENDPOINT="https://airlock.example/userinfo",
        OIDC_OP_JWKS_ENDPOINT="https://airlock.example/jwks",
    )


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def runs_seen(connection: psycopg.Connection, tenant_id: int | None) -> int:
    with connection.transaction():
        if tenant_id is not None:
            connection.execute("SELECT set_config('kahn.tenant_id', %s, true)", [str(tenant_id)])
        return connection.execute("SELECT count(*) FROM runs_run").fetchone()[0]


def test_cloud_migrations_run_as_the_owner_and_the_service_role_gets_rows_only(fresh_database):
    db = fresh_database
    env = cloud_env(db)
    assert "Granted the service role" in ok(manage("migrate", "--no-input", env=env))

    with db.connect() as catalog:
        not_owned = catalog.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tableowner <> %s", [db.owner]
        ).fetchall()
        assert not_owned == []
        assert catalog.execute(
            "SELECT count(*) FROM pg_class WHERE relowner = %s::regrole", [db.service]
        ).fetchone() == (0,)
        assert catalog.execute(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = %s", [db.service]
        ).fetchone() == (False, False)
        privileges = dict(
            catalog.execute(
                "SELECT tablename, array_remove(ARRAY["
                " CASE WHEN has_table_privilege(%(role)s, tablename, 'SELECT') THEN 'SELECT' END,"
                " CASE WHEN has_table_privilege(%(role)s, tablename, 'INSERT') THEN 'INSERT' END,"
                " CASE WHEN has_table_privilege(%(role)s, tablename, 'UPDATE') THEN 'UPDATE' END,"
                " CASE WHEN has_table_privilege(%(role)s, tablename, 'DELETE') THEN 'DELETE' END,"
                " CASE WHEN has_table_privilege(%(role)s, tablename, 'TRUNCATE') THEN 'TRUNCATE' END,"
                " CASE WHEN has_table_privilege(%(role)s, tablename, 'REFERENCES') THEN 'REFERENCES' END,"
                " CASE WHEN has_table_privilege(%(role)s, tablename, 'TRIGGER') THEN 'TRIGGER' END], NULL)"
                " FROM pg_tables WHERE schemaname = 'public'",
                {"role": db.service},
            ).fetchall()
        )
    rows = ["SELECT", "INSERT", "UPDATE", "DELETE"]
    assert privileges.pop("django_migrations") == ["SELECT"]
    assert privileges.pop("tenants_staffaccess") == ["SELECT", "INSERT"]
    assert privileges and all(granted == rows for granted in privileges.values()), privileges

    # The service role runs the commands: a tenant with its owner, then an import into it.
    assert "created tenant acme" in ok(
        manage("create_tenant", "acme", "--owner", "alice@example.com", env=env)
    )
    ok(manage("ingest_archive", str(DEMO_ARCHIVE), "--tenant", "acme", env=env))
    with db.connect(db.service) as service:
        acme = service.execute("SELECT id FROM tenants_tenant WHERE slug = 'acme'").fetchone()[0]
        assert runs_seen(service, None) == 0
        assert runs_seen(service, acme) == 6
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            service.execute("TRUNCATE runs_event")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            service.execute("ALTER TABLE runs_run NO FORCE ROW LEVEL SECURITY")


def staff_access_privileges(database: Database) -> list[bool]:
    with database.connect() as catalog:
        return [
            catalog.execute(
                "SELECT has_table_privilege(%s, 'tenants_staffaccess', %s)", [database.service, privilege]
            ).fetchone()[0]
            for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE")
        ]


def test_the_service_role_adds_to_the_staff_access_audit_and_never_rewrites_it(fresh_database):
    db = fresh_database
    env = cloud_env(db)
    ok(manage("migrate", "--no-input", env=env))
    assert staff_access_privileges(db) == [True, True, False, False]

    with db.connect(db.service) as service:
        service.execute(
            "INSERT INTO tenants_staffaccess (at, actor, tenant_ref, tenant_slug, reason)"
            " VALUES (now(), 'ops (user 1)', 1, 'acme', 'admin: tenant page')"
        )
        for statement in (
            "UPDATE tenants_staffaccess SET reason = 'nothing happened'",
            "DELETE FROM tenants_staffaccess",
            "TRUNCATE tenants_staffaccess",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="tenants_staffaccess"):
                service.execute(statement)
        assert service.execute("SELECT actor, reason FROM tenants_staffaccess").fetchall() == [
            ("ops (user 1)", "admin: tenant page")
        ]

    # A database granted before the audit was append-only: the next `migrate`, with nothing to
    # apply, takes the two privileges back.
    with db.connect() as admin:
        admin.execute(f"GRANT UPDATE, DELETE ON tenants_staffaccess TO {db.service}")
    assert staff_access_privileges(db) == [True, True, True, True]
    assert "No migrations to apply" in ok(manage("migrate", "--no-input", env=env))
    assert staff_access_privileges(db) == [True, True, False, False]


def test_oss_mode_on_postgresql_works_with_a_role_that_is_held_to_its_own_policies(fresh_database):
    # One role owns and uses the tables; FORCE holds the owner to row-level security, so OSS's
    # requests and imports must bind the local tenant like cloud's do.
    db = fresh_database
    env = manage_env(DATABASE_URL=db.url(db.owner))
    ok(manage("migrate", "--no-input", env=env))
    ok(manage("ingest_archive", str(DEMO_ARCHIVE), env=env))
    with db.connect(db.owner) as owner:
        local = owner.execute("SELECT id FROM tenants_tenant WHERE slug = 'local'").fetchone()[0]
        assert runs_seen(owner, None) == 0
        assert runs_seen(owner, local) == 6

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(PROJECT / "manage.py"), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        history = wait_for(f"{url}/", server)
        assert history.status_code == 200 and "run_flaky" in history.text
        rows = requests.get(f"{url}/api/v1/runs/", timeout=10).json()["results"]
        assert len(rows) == 6
        assert requests.get(f"{url}/runs/run_flaky/", timeout=10).status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=10)


def wait_for(url: str, server: subprocess.Popen, within: float = 30) -> requests.Response:
    deadline = time.monotonic() + within
    while True:
        try:
            return requests.get(url, timeout=5)
        except requests.ConnectionError:
            if server.poll() is not None:
                raise AssertionError(f"the server exited: {server.stderr.read()}") from None
            if time.monotonic() > deadline:
                raise AssertionError(f"the server did not answer within {within} s") from None
            time.sleep(0.1)
