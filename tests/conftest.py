"""The shared world of the suite: the sample archive, the local tenant, and the two-tenant world
(alice in acme, bob in globex, carol in both). Runs beyond the sample come from the project's own
simulator (ingest/simulator.py): the suite needs nothing outside the repository."""

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from ingest.simulator import archive_synthesize
from tenants.context import tenant_scope
from tenants.models import LOCAL_TENANT_SLUG, Tenant
from tests.servers import ServerDidNotStart, served

PROJECT = Path(__file__).resolve().parents[1]
# The six runs of SPEC section 3, with their edge cases: data in the project, also what `make run` shows.
SAMPLE_ARCHIVE = PROJECT / "ingest" / "demo_archive"


# ---------------------------------------------------------------- PostgreSQL through a pooler


def pooler_port() -> int | None:
    """`TEST_POOLER_PORT`: PgBouncer's port, in transaction pooling mode, in front of the test server.

    Set (`make test` sets it for the PostgreSQL pass, with `DATABASE_POOLER=transaction`), every
    connection of the tests, and of the servers, commands and workers they start, goes through it;
    pytest-django makes and drops the test databases on the server itself, as a pooler cannot.
    """
    from django.db import connection

    value = os.environ.get("TEST_POOLER_PORT", "").strip()
    if not value or connection.vendor != "postgresql":
        return None
    return int(value)


def pooler_admin(*commands: str) -> list[dict[str, Any]]:
    """Runs commands on the pooler's admin console (PgBouncer's `pgbouncer` database); the rows of
    the last, each as a dict."""
    import psycopg
    from django.db import connection
    from psycopg.rows import dict_row

    db = connection.settings_dict
    with psycopg.connect(
        host=db["HOST"] or "127.0.0.1",
        port=pooler_port(),
        user=db["USER"] or "postgres",
        dbname="pgbouncer",
        autocommit=True,
        row_factory=dict_row,
    ) as admin:
        rows: list[dict[str, Any]] = []
        for command in commands:
            # Without parameters psycopg sends plain text: the admin console knows no other protocol.
            cursor = admin.execute(command.encode(), prepare=False)
            rows = cursor.fetchall() if cursor.description else []
        return rows


def other_connections_to_test_database() -> int:
    """The connections to the test database open now besides this thread's: the server's, or, through
    a pooler, the pooler's clients (it keeps its own server connections open between clients)."""
    import socket

    from django.db import connection

    connection.ensure_connection()
    if pooler_port() is None:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return cursor.fetchone()[0]
    # Our own client is the one whose port is this connection's local port.
    with socket.socket(fileno=os.dup(connection.connection.pgconn.socket)) as ours:
        own_port = ours.getsockname()[1]
    clients = pooler_admin("SHOW CLIENTS")
    name = connection.settings_dict["NAME"]
    return sum(1 for client in clients if client["database"] == name and client["port"] != own_port)


@pytest.fixture(scope="session", autouse=True)
def through_the_pooler(request) -> Iterator[None]:
    """With `TEST_POOLER_PORT`, the test database is reached through the pooler once it is made."""
    port = pooler_port()
    if port is None:
        yield
        return
    from django.conf import settings
    from django.db import connections

    if settings.DATABASE_POOLER != "transaction":
        pytest.exit("TEST_POOLER_PORT needs DATABASE_POOLER=transaction: the settings a pooler needs", 2)
    request.getfixturevalue("django_db_setup")
    default = connections["default"]
    direct = default.settings_dict["PORT"]
    name = default.settings_dict["NAME"]
    default.close()
    # Shared by the connections of every thread: each connects through the pooler from now on.
    default.settings_dict["PORT"] = port
    try:
        yield
    finally:
        default.close()
        default.settings_dict["PORT"] = direct
        # The pooler keeps server connections to the test database open; pytest-django drops it next.
        pooler_admin(f'KILL "{name}"', f'RESUME "{name}"')


@pytest.fixture
def local_tenant(db) -> Iterator[Tenant]:
    # Created by migration; a transactional test's flush removes it, so make it again if needed.
    tenant, _ = Tenant.objects.get_or_create(slug=LOCAL_TENANT_SLUG, defaults={"name": "Local"})
    # The test acts for it, as OSS requests and commands do: tenant-owned managers refuse no tenant.
    with tenant_scope(tenant):
        yield tenant


@pytest.fixture
def sample_archive(tmp_path: Path) -> Path:
    """A writable copy of the sample archive of SPEC section 3."""
    root = tmp_path / "archive"
    shutil.copytree(SAMPLE_ARCHIVE, root)
    return root


def manage_env(**extra: str) -> dict[str, str]:
    """The environment for a `manage.py` subprocess that works on this test's database."""
    from django.db import connection

    settings_dict = connection.settings_dict
    if connection.vendor == "sqlite":
        url = f"sqlite:///{settings_dict['NAME']}"
    else:
        host, port = settings_dict["HOST"] or "127.0.0.1", settings_dict["PORT"] or 5432
        user = settings_dict["USER"] or "postgres"
        url = f"postgres://{user}@{host}:{port}/{settings_dict['NAME']}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAHN_", "DJANGO_", "DATABASE_"))}
    env = {**env, "DATABASE_URL": url, **extra}
    url = env["DATABASE_URL"]
    # A URL that leads to the pooler (`through_the_pooler`) needs the settings a pooler needs.
    if url.startswith("postgres") and urlsplit(url).port == (pooler_port() or -1):
        env.setdefault("DATABASE_POOLER", "transaction")
    return env


def manage(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Runs `manage.py` as an operator would, against this test's database unless `env` says otherwise."""
    return subprocess.run(
        [sys.executable, str(PROJECT / "manage.py"), *args],
        env=env if env is not None else manage_env(),
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,
    )


# ---------------------------------------------------------------- the read side's world


def write_archive_run(
    root: Path, run_id: str, events: list[dict], graph: dict | None = None, summary: dict | None = None
) -> None:
    """Writes one run as a producer would: its log, and graph.json / summary.json when given."""
    import json

    folder = root / "runs" / run_id
    folder.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(event, separators=(",", ":")) + "\n" for event in events)
    (folder / "transitions.jsonl").write_text(lines)
    if graph is not None:
        (folder / "graph.json").write_text(json.dumps(graph))
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))


# A run that starts without run_start (so it has no `started`) and has no graph.
HEADLESS_EVENTS = [
    {
        "ts": "2026-11-20T08:00:00.000Z",
        "event": "transition",
        "node": "warm-up",
        "from": "pending",
        "to": "running",
        "attempt": 1,
    },
]
# A run whose DAG comes inside run_start, with extra fields on nodes and events and an unknown kind.
INLINE_GRAPH = {
    "version": 1,
    "nodes": [
        {"id": "fetch", "deps": [], "label": "Fetch sources", "kind": "io"},
        {"id": "build", "deps": ["fetch"], "label": "Build wheels"},
    ],
}
INLINE_EVENTS = [
    {
        "ts": "2026-11-20T15:00:00.000Z",
        "event": "run_start",
        "run_id": "run_inline",
        "graph": INLINE_GRAPH,
        "host": "ci-runner-3",
    },
    {
        "ts": "2026-11-20T15:00:00.000Z",
        "event": "transition",
        "node": "fetch",
        "from": "pending",
        "to": "running",
        "attempt": 1,
    },
    {"ts": "2026-11-20T15:00:02.500Z", "event": "checkpoint", "note": "cache warm"},
    {
        "ts": "2026-11-20T15:00:05.000Z",
        "event": "node_attempt",
        "node": "fetch",
        "attempt": 1,
        "ok": True,
        "duration_s": 5.0,
        "exit_code": 0,
        "bytes": 1024,
    },
    {
        "ts": "2026-11-20T15:00:05.000Z",
        "event": "transition",
        "node": "fetch",
        "from": "running",
        "to": "done",
        "attempt": 1,
    },
    {
        "ts": "2026-11-20T15:00:05.000Z",
        "event": "transition",
        "node": "build",
        "from": "pending",
        "to": "running",
        "attempt": 1,
    },
    {
        "ts": "2026-11-20T15:00:09.000Z",
        "event": "node_attempt",
        "node": "build",
        "attempt": 1,
        "ok": True,
        "duration_s": 4.0,
        "exit_code": 0,
    },
    {
        "ts": "2026-11-20T15:00:09.000Z",
        "event": "transition",
        "node": "build",
        "from": "running",
        "to": "done",
        "attempt": 1,
    },
    {"ts": "2026-11-20T15:00:09.200Z", "event": "run_end", "exit_code": 0},
]


def ingest_quietly(root: Path, *args: str) -> None:
    from io import StringIO

    from django.core.management import call_command

    call_command("ingest_archive", str(root), *args, stdout=StringIO(), stderr=StringIO())


@pytest.fixture
def imported(local_tenant: Tenant, sample_archive: Path) -> Path:
    """The sample archive plus `run_headless` and `run_inline`, imported into the local tenant."""
    write_archive_run(sample_archive, "run_headless", HEADLESS_EVENTS)
    write_archive_run(sample_archive, "run_inline", INLINE_EVENTS)
    ingest_quietly(sample_archive)
    return sample_archive


@pytest.fixture
def many_runs(imported: Path) -> Path:
    """Adds 24 synthetic runs: two seeds whose runs start at the same instants, pair by pair."""
    for seed in (1, 2):
        archive_synthesize(imported, runs=12, nodes=5, seed=seed)
    ingest_quietly(imported)
    return imported


# ---------------------------------------------------------------- the two-tenant world


@dataclass(frozen=True)
class World:
    """Two tenants and three people: alice in acme, bob in globex, carol in both (acme first).

    Nobody has signed in yet: each user has an email and no login identity, so a first OIDC
    sign-in with that email (verified) claims the user, as for an owner named by `create_tenant`.
    """

    acme: Tenant
    globex: Tenant
    alice: Any
    bob: Any
    carol: Any


def world_build() -> World:
    from django.contrib.auth import get_user_model

    from tenants.models import Role
    from tenants.services import membership_create, tenant_create

    User = get_user_model()
    acme = tenant_create(slug="acme", name="Acme")
    globex = tenant_create(slug="globex", name="Globex")
    alice, bob, carol = (
        User.objects.create_user(username=name, email=f"{name}@example.com")
        for name in ("alice", "bob", "carol")
    )
    membership_create(tenant=acme, user=alice, role=Role.OWNER)
    membership_create(tenant=globex, user=bob, role=Role.OWNER)
    membership_create(tenant=acme, user=carol, role=Role.MEMBER)
    membership_create(tenant=globex, user=carol, role=Role.ADMIN)
    return World(acme=acme, globex=globex, alice=alice, bob=bob, carol=carol)


@pytest.fixture
def world(db) -> World:
    return world_build()


def small_run_events(run_id: str, *, ok: bool = True) -> list[dict[str, Any]]:
    """A small complete run: one node, `build`, that succeeds or fails at its only attempt; six
    events, one of a kind this version does not know."""
    ts = "2026-11-20T10:00:00.000Z"
    return [
        {
            "ts": ts,
            "event": "run_start",
            "run_id": run_id,
            "graph": {"version": 1, "nodes": [{"id": "build", "deps": []}]},
        },
        {"ts": ts, "event": "transition", "node": "build", "from": "pending", "to": "running", "attempt": 1},
        {
            "ts": ts,
            "event": "node_attempt",
            "node": "build",
            "attempt": 1,
            "ok": ok,
            "duration_s": 1.5,
            "exit_code": 0 if ok else 1,
        },
        {
            "ts": ts,
            "event": "transition",
            "node": "build",
            "from": "running",
            "to": "done" if ok else "failed",
            "attempt": 1,
        },
        # A kind this version does not know: stored, and noted by an `unknown_event` diagnostic.
        {"ts": ts, "event": "producer_note", "text": "cache warm"},
        {"ts": "2026-11-20T10:00:02.000Z", "event": "run_end", "exit_code": 0 if ok else 1},
    ]


def run_record(tenant: Tenant, run_id: str, *, ok: bool = True) -> None:
    """Stores a small complete run (`small_run_events`; one diagnostic) for `tenant`, through the
    one write path."""
    import orjson

    from runs.services import RunBatch
    from tenants.context import tenant_atomic

    events = small_run_events(run_id, ok=ok)
    with tenant_atomic(tenant):
        batch = RunBatch(tenant=tenant)
        change = batch.open([run_id])[run_id]
        for event in events:
            change.append(event, orjson.dumps(event).decode())
        batch.flush()


@pytest.fixture
def world_runs(world: World) -> World:
    """The world with one run in each tenant: `acme_nightly` and `globex_nightly`."""
    run_record(world.acme, "acme_nightly")
    run_record(world.globex, "globex_nightly", ok=False)
    return world


# ---------------------------------------------------------------- a real server


@contextmanager
def scope_server(
    env: dict[str, str], *args: str, port: int | None = None, ready_path: str = "/api/v1/schema/"
) -> Iterator[str]:
    """`manage.py serve` in a subprocess on loopback (a free port unless given), until the block
    ends; yields its URL (`tests.servers.served`).

    Waits until it answers; if it dies or never answers, the test fails with the server's output.
    """
    try:
        with served(env, *args, port=port, ready_path=ready_path) as server:
            try:
                yield server.url
            finally:
                # Shown with a failing test's output: the server's own account of what went wrong.
                print(f"--- manage.py serve {' '.join(args)} ---\n{server.output()}")
    except ServerDidNotStart as failure:
        pytest.fail(str(failure))
