"""`manage.py serve` in cloud mode, as real processes: daphne keeps to its pool of database
connections under concurrent requests, and `--http-workers` serves HTTP with gunicorn beside daphne."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from io import StringIO

import orjson
import psycopg
import pytest
import requests
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from tenants.services import api_key_create
from tests.conftest import pooler_admin, pooler_port, scope_server, world_build
from tests.runs.live_client import LiveClient
from tests.runs.test_live_socket import event
from tests.servers import free_port
from tests.tenants.conftest import POSTGRES_ONLY, cloud_server_env
from tests.tenants.conftest import service_role as service_role  # the fixture, for this directory


def test_http_workers_are_for_cloud_mode_only():
    with pytest.raises(CommandError, match="--http-workers is for cloud mode"):
        call_command("serve", "--http-workers", "2", stdout=StringIO())


def connections_of(role: str) -> int:
    """The connections `role` holds to the test database now, seen from a connection of our own:
    the server's, or, through a pooler, the pooler's clients (its server connections outlive the
    clients they served, and serve other tests' servers of the same role)."""
    db = connection.settings_dict
    if pooler_port() is not None:
        clients = pooler_admin("SHOW CLIENTS")
        return sum(1 for client in clients if client["user"] == role and client["database"] == db["NAME"])
    url = (
        f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    )
    with psycopg.connect(url) as watcher:
        return watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", [role]).fetchone()[
            0
        ]


# Cloud mode is PostgreSQL's: these run on the PostgreSQL pass of the suite.
on_postgresql = POSTGRES_ONLY


@on_postgresql[0]
@on_postgresql[1]
@pytest.mark.django_db(transaction=True)
def test_daphne_holds_no_more_connections_than_its_pool_under_concurrent_requests(service_role):
    pool = 3
    world = world_build()
    _, key = api_key_create(tenant=world.acme, name="reader")
    env = cloud_server_env(service_role, DATABASE_POOL_SIZE=str(pool))
    with scope_server(env, "--host", "127.0.0.1") as url:
        # Daphne runs each request's sync code in a thread of its own: connections kept per thread
        # would pile up here, one for each request in flight.
        most, done = 0, threading.Event()

        def watch() -> None:
            nonlocal most
            while not done.is_set():
                most = max(most, connections_of(service_role))

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            with ThreadPoolExecutor(16) as readers:
                answers = list(
                    readers.map(
                        lambda _: (
                            requests.get(
                                f"{url}/api/v1/runs/", headers={"Authorization": f"Bearer {key}"}, timeout=30
                            ).status_code
                        ),
                        range(96),
                    )
                )
        finally:
            done.set()
            watcher.join()
    assert answers == [200] * 96
    assert 1 <= most <= pool


def is_listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@on_postgresql[0]
@on_postgresql[1]
@pytest.mark.django_db(transaction=True)
def test_http_workers_serve_http_with_gunicorn_and_websocket_with_daphne(service_role):
    world = world_build()
    _, key = api_key_create(tenant=world.acme, name="producer")
    ws_port = free_port()
    env = cloud_server_env(service_role, KAHN_LIVE_REDIS_PREFIX=f"kahn-test-{uuid.uuid4().hex[:12]}")
    with scope_server(env, "--host", "127.0.0.1", "--http-workers", "2", "--ws-port", str(ws_port)) as url:
        http_port = int(url.rsplit(":", 1)[1])
        daphne_url = f"http://127.0.0.1:{ws_port}"
        # The two start side by side: the workers answered first; wait for daphne too.
        deadline = time.monotonic() + 30
        while not is_listening(ws_port):
            assert time.monotonic() < deadline, "daphne never listened on --ws-port"
            time.sleep(0.1)

        async def scenario() -> None:
            # A page's socket, on daphne's port, follows a run whose events a producer posts to
            # the workers: they reach it through Redis, as from any other replica.
            client = await LiveClient.open(daphne_url, key=key)
            await client.subscribe(run_id="via_gunicorn", after_seq=-1)
            events = [event(seq, "via_gunicorn") for seq in range(3)]
            posted = await asyncio.to_thread(
                requests.post,
                f"{url}/api/v1/runs/via_gunicorn/events",
                data=b"".join(orjson.dumps(e) + b"\n" for e in events),
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/x-ndjson"},
                timeout=10,
            )
            assert (posted.status_code, posted.json()["next_seq"]) == (200, 3)
            assert posted.headers["Server"].startswith("gunicorn")
            await client.until(lambda: len(client.seqs["via_gunicorn"]) >= 3)
            assert client.seqs["via_gunicorn"] == [0, 1, 2]
            await client.close()

        asyncio.run(scenario())
        # The static files a page needs come from the workers too.
        assert requests.get(f"{url}/static/scope.css", timeout=10).status_code == 200
        daphne = requests.get(f"{daphne_url}/signed-out/", timeout=10)
        assert (daphne.status_code, daphne.headers["Server"]) == (200, "daphne")
    # Stopping `serve` stopped both.
    assert not is_listening(http_port) and not is_listening(ws_port)
