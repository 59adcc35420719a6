"""Behind PgBouncer in transaction pooling mode (README, "Behind PgBouncer"): each transaction of one
Django connection may run on another server connection, and the tenant bound in one never reaches
the next transaction to run on that server connection, whoever's it is.

Runs when the suite reaches PostgreSQL through a pooler (`TEST_POOLER_PORT`, as `make test` does)."""

from collections.abc import Iterator
from contextlib import ExitStack

import psycopg
import pytest
from django.db import connection

from runs.models import Run
from tenants.context import TENANT_SETTING, tenant_atomic
from tests.conftest import pooler_port
from tests.tenants.conftest import POSTGRES_ONLY

pytestmark = [
    *POSTGRES_ONLY,
    pytest.mark.skipif(pooler_port() is None, reason="the suite does not reach PostgreSQL through a pooler"),
]


def backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def other_client(role: str) -> psycopg.Connection:
    """A second client of the pooler, as `role` on the test database: the same pool as ours."""
    db = connection.settings_dict
    return psycopg.connect(
        host=db["HOST"] or "127.0.0.1",
        port=pooler_port(),
        user=role,
        dbname=db["NAME"],
        prepare_threshold=None,
    )


@pytest.fixture
def clients(as_service) -> Iterator[list[psycopg.Connection]]:
    with ExitStack() as stack:
        opened: list[psycopg.Connection] = []
        stack.callback(lambda: [client.close() for client in opened])
        yield opened


def test_a_connections_transactions_move_between_servers_and_leave_no_tenant_behind(
    world_runs, as_service, clients
):
    acme = world_runs.acme
    with tenant_atomic(acme):
        first = backend_pid()
        assert list(Run.objects.values_list("run_id", flat=True)) == ["acme_nightly"]
    # Other clients take the pool's idle server connections, each in an open transaction that holds
    # it, until one holds the server connection our tenant's transaction ran on.
    holder = None
    for _ in range(8):
        client = other_client(as_service)
        clients.append(client)
        if client.execute("SELECT pg_backend_pid()").fetchone()[0] == first:
            holder = client
            break
    assert holder is not None, "no other client was given the server connection of our transaction"
    # Our next transaction runs elsewhere: the pooler gave it another server connection.
    with tenant_atomic(world_runs.globex):
        assert backend_pid() != first
        assert list(Run.objects.values_list("run_id", flat=True)) == ["globex_nightly"]
    # The server connection acme's transaction ran on, now another client's: no tenant, no rows.
    assert holder.execute("SELECT current_setting(%s, true)", [TENANT_SETTING]).fetchone()[0] in (None, "")
    assert holder.execute("SELECT count(*) FROM runs_run").fetchone()[0] == 0
    assert holder.execute("SELECT count(*) FROM runs_event").fetchone()[0] == 0
