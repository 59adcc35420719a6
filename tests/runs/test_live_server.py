"""/ws/live served by daphne (`manage.py serve`) to real WebSocket clients (`websockets`).

OSS mode (both databases): the server follows its archive in-process, and the resume property
holds over the in-memory layer. Cloud mode (PostgreSQL, Redis): the server runs as the service role
under row-level security, as in production; handshakes without credentials get 4401; tenants never
see each other's runs; and the two known channels-redis pitfalls of PERF.md are tried for real: a
socket idle past channels-redis' 5 s blocking read, and bursts beyond its default capacity of 100.

Each test's data is committed (transactional tests), where the server reads it.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from django.conf import settings
from django.db import connection
from django.test import Client

from runs.models import Run
from tenants.context import tenant_atomic
from tenants.services import api_key_create
from tests.conftest import PROJECT, manage, manage_env, scope_server, write_archive_run
from tests.runs.live_client import PATIENCE, LiveClient, post_events
from tests.runs.test_live_socket import event

pytestmark = pytest.mark.django_db(transaction=True)

# One Redis namespace for this test session: other suites on the same Redis never cross it.
REDIS_PREFIX = f"kahn-test-{uuid.uuid4().hex[:12]}"


def run(scenario) -> None:
    asyncio.run(scenario)


def lines_of(root: Path, run_id: str) -> int:
    return (root / "runs" / run_id / "transitions.jsonl").read_bytes().count(b"\n")


async def produce_live(root: Path, run_id: str, interval: str = "0.01") -> None:
    """`manage.py simulate_archive --live`: a producer appending one line at a time to its archive."""
    producer = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PROJECT / "manage.py"),
        "simulate_archive",
        str(root),
        "--live",
        run_id,
        "--interval",
        interval,
        stdout=asyncio.subprocess.DEVNULL,
    )
    assert await producer.wait() == 0


# ---------------------------------------------------------------- OSS


def test_serve_follows_its_archive_and_pushes_every_line_to_a_subscriber(local_tenant, tmp_path):
    archive = tmp_path / "archive"
    (archive / "runs").mkdir(parents=True)
    env = manage_env(KAHN_ARCHIVE=str(archive))
    with scope_server(env, "--follow-interval", "0.1") as url:

        async def scenario():
            client = await LiveClient.open(url)
            # Subscribed before the run exists: it is followed from its first line.
            assert (await client.subscribe(run_id="run_lv", after_seq=-1))["next_seq"] == 0
            await client.subscribe(runs="*")
            await produce_live(archive, "run_lv")
            lines = lines_of(archive, "run_lv")
            await client.until(lambda: len(client.seqs["run_lv"]) >= lines)
            assert client.seqs["run_lv"] == list(range(lines))
            await client.until(lambda: any(row["status"] == "complete" for row in client.rows))
            assert client.rows[-1]["run_id"] == "run_lv" and client.rows[-1]["total_nodes"] == 7
            await client.close()

        run(scenario())


def test_serve_no_follow_leaves_the_archive_alone(local_tenant, tmp_path):
    archive = tmp_path / "archive"
    write_archive_run(archive, "run_left", [event(0, "run_left")])
    with scope_server(manage_env(KAHN_ARCHIVE=str(archive)), "--no-follow") as url:
        assert post_events(url, "run_other", [event(0, "run_other")])["next_seq"] == 1
    with tenant_atomic(local_tenant):
        assert list(Run.objects.values_list("run_id", flat=True)) == ["run_other"]


# ---------------------------------------------------------------- the resume property


async def resume_property(
    url: str, run_id: str, *, key: str | None = None, seed: int, producer_url: str | None = None
) -> None:
    """A producer POSTs 2,000 events in batches of random sizes (to `producer_url`, another replica,
    when given) while six clients connect at random moments, drop their socket (closed or cut) at
    random points and resume with `after_seq`: each ends with seqs 0..1999, each once."""
    total, rng = 2000, random.Random(seed)

    async def producer() -> None:
        sent = 0
        while sent < total:
            size = min(rng.randint(1, 60), total - sent)
            batch = [event(seq, run_id) for seq in range(sent, sent + size)]
            await asyncio.to_thread(post_events, producer_url or url, run_id, batch, key=key, first_seq=sent)
            sent += size
            await asyncio.sleep(rng.uniform(0, 0.004))

    async def follower(plan: random.Random) -> list[int]:
        seen: list[int] = []
        await asyncio.sleep(plan.uniform(0, 1.0))  # joins somewhere in the production
        drops = plan.randint(2, 5)
        while not seen or seen[-1] < total - 1:
            client = await LiveClient.open(url, key=key)
            await client.send(
                {"action": "subscribe", "run_id": run_id, "after_seq": seen[-1] if seen else -1}
            )
            stop_after = plan.randint(1, 300) if drops else None
            got = 0
            while (not seen or seen[-1] < total - 1) and (stop_after is None or got < stop_after):
                message = await client.receive()
                if message["type"] == "events":
                    seen += [e["seq"] for e in message["events"]]
                    got += len(message["events"])
                assert message["type"] in ("events", "subscribed"), message
            if drops and plan.random() < 0.5:
                client.connection.transport.abort()  # cut, not closed: the server learns it late
            else:
                await client.close()
            drops = max(0, drops - 1)
            await asyncio.sleep(plan.uniform(0, 0.05))
        return seen

    plans = [random.Random(rng.random()) for _ in range(6)]
    results = await asyncio.wait_for(
        asyncio.gather(producer(), *(follower(plan) for plan in plans)), timeout=120
    )
    for seen in results[1:]:
        assert seen == list(range(total)), f"seed {seed}: {len(seen)} events, first wrong at " + str(
            next((i for i, s in enumerate(seen) if s != i), None)
        )


def test_resume_property_over_the_in_memory_layer(local_tenant):
    seed = random.randrange(2**32)
    with scope_server(manage_env(), "--no-follow") as url:
        run(resume_property(url, "run_resumed", seed=seed))


# ---------------------------------------------------------------- cloud mode: Redis, keys, RLS

# Sign-in is never used here (keys only): cloud mode's OIDC settings must merely be present.
OIDC_NEVER_CALLED = {
    "OIDC_RP_CLIENT_ID": "kahn-scope",
    "OIDC_RP_CLIENT_SECRET": "not-used",
    "OIDC_OP_AUTHORIZATION_ENDPOINT": "http://127.0.0.1:9/authorize",
    "OIDC_OP_TOKEN_ENDPOINT": "http://127.0.0.1:9/token",
    "OIDC_OP_USER_ENDPOINT": "http://127.0.0.1:9/userinfo",
    "OIDC_OP_JWKS_ENDPOINT": "http://127.0.0.1:9/jwks",
}


def cloud_env(database_role: str | None = None) -> dict[str, str]:
    settings_dict = connection.settings_dict
    user = database_role or settings_dict["USER"] or "postgres"
    host, port = settings_dict["HOST"] or "127.0.0.1", settings_dict["PORT"] or 5432
    return manage_env(
        KAHN_MODE="cloud",
        DATABASE_URL=f"postgres://{user}@{host}:{port}/{settings_dict['NAME']}",
        DJANGO_SECRET_KEY="live-tests-" + "x" * 40,
        # Keys are made by the tests, in this process: the server must hash them the same way.
        KAHN_API_KEY_PEPPER=settings.KAHN_API_KEY_PEPPER,
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        REDIS_URL="redis://127.0.0.1:6379/14",
        KAHN_LIVE_REDIS_PREFIX=REDIS_PREFIX,
        # Rate limits have their own tests; these post as fast as they can.
        KAHN_RATE_LIMITS="false",
        **OIDC_NEVER_CALLED,
    )


@pytest.fixture(scope="module")
def cloud_url(request, django_db_blocker) -> Iterator[str]:
    """Scope in cloud mode, served by `manage.py serve` as the service role (no BYPASSRLS)."""
    if connection.vendor != "postgresql":
        pytest.skip("cloud mode needs PostgreSQL")
    service_role = request.getfixturevalue("service_role")
    with django_db_blocker.unblock():
        env = cloud_env(service_role)
    with scope_server(env, "--host", "127.0.0.1") as url:
        yield url


@pytest.fixture
def keys(world) -> dict[str, str]:
    return {
        tenant.slug: api_key_create(tenant=tenant, name="live")[1] for tenant in (world.acme, world.globex)
    }


async def close_code(client: LiveClient) -> int:
    with pytest.raises(websockets.ConnectionClosed):
        await client.receive()
    return client.connection.close_code


@pytest.mark.postgres
def test_cloud_handshakes_without_credentials_get_4401(cloud_url, keys):
    async def scenario():
        assert await close_code(await LiveClient.open(cloud_url)) == 4401
        assert (
            await close_code(await LiveClient.open(cloud_url, key="kahn_live_sk_nobody_" + "x" * 32)) == 4401
        )
        # With a key, the socket stays open and answers, whatever its Origin, or with none at all
        # (a client that is not a browser): the key speaks for it, no cookie does.
        for origin in (cloud_url, "https://evil.example", None):
            connection = await websockets.connect(
                cloud_url.replace("http", "ws") + "/ws/live",
                origin=origin,
                additional_headers={"Authorization": f"Bearer {keys['acme']}"},
            )
            client = LiveClient(connection)
            assert (await client.subscribe(runs="*")) == {"type": "subscribed", "runs": "*"}
            await client.close()

    run(scenario())


@pytest.mark.postgres
def test_cloud_session_sockets_need_the_sites_own_origin(cloud_url, world, settings):
    """The origin is scheme, host and port: the same host on another port or scheme is another site."""
    settings.SECRET_KEY = cloud_env()["DJANGO_SECRET_KEY"]  # the session must be good at the server
    browser = Client()
    browser.force_login(world.alice, backend="tenants.oidc.TenantOIDCBackend")
    cookie = {"Cookie": f"sessionid={browser.cookies['sessionid'].value}"}
    port = cloud_url.rsplit(":", 1)[1]

    async def scenario():
        for origin in (
            f"http://127.0.0.1:{int(port) + 1}",
            "http://127.0.0.1:1",
            f"https://127.0.0.1:{port}",
            None,
        ):
            with pytest.raises(websockets.InvalidStatus) as refused:
                await websockets.connect(
                    cloud_url.replace("http", "ws") + "/ws/live", origin=origin, additional_headers=cookie
                )
            assert refused.value.response.status_code == 403, origin
        connection = await websockets.connect(
            cloud_url.replace("http", "ws") + "/ws/live", origin=cloud_url, additional_headers=cookie
        )
        client = LiveClient(connection)
        assert (await client.subscribe(runs="*")) == {"type": "subscribed", "runs": "*"}
        await client.close()

    run(scenario())


@pytest.mark.postgres
def test_cloud_tenants_never_see_each_others_events_or_rows(cloud_url, keys):
    async def scenario():
        acme = await LiveClient.open(cloud_url, key=keys["acme"])
        globex = await LiveClient.open(cloud_url, key=keys["globex"])
        for client in (acme, globex):
            await client.subscribe(run_id="nightly", after_seq=-1)
            await client.subscribe(runs="*")
        await asyncio.to_thread(
            post_events, cloud_url, "nightly", [event(s, "nightly") for s in range(3)], key=keys["globex"]
        )
        await asyncio.to_thread(
            post_events, cloud_url, "nightly", [event(s, "nightly") for s in range(2)], key=keys["acme"]
        )
        await acme.until(lambda: len(acme.seqs["nightly"]) >= 2 and acme.rows)
        await globex.until(lambda: len(globex.seqs["nightly"]) >= 3 and globex.rows)
        assert await acme.quiet_for(0.5) and await globex.quiet_for(0.1)
        assert acme.seqs == {"nightly": [0, 1]} and globex.seqs == {"nightly": [0, 1, 2]}
        assert {row["total_nodes"] for row in acme.rows} == {1} and {
            row["total_nodes"] for row in globex.rows
        } == {2}
        await acme.close()
        await globex.close()

    run(scenario())


@pytest.mark.postgres
def test_resume_property_over_redis(cloud_url, keys):
    run(resume_property(cloud_url, "resumed", key=keys["acme"], seed=random.randrange(2**32)))


@pytest.mark.postgres
def test_a_socket_idle_past_channels_redis_blocking_read_stays_open(cloud_url, keys):
    """channels-redis reads with a 5 s server-side block; a client read timeout of 5 s (redis-py 8's
    default) would end idle sockets with 1011 (channels_redis#422). Settings set none."""

    async def scenario():
        client = await LiveClient.open(cloud_url, key=keys["acme"])
        await client.subscribe(run_id="quiet", after_seq=-1)
        await asyncio.sleep(6.5)
        await asyncio.to_thread(post_events, cloud_url, "quiet", [event(0, "quiet")], key=keys["acme"])
        await client.until(lambda: client.seqs["quiet"] == [0])
        assert client.connection.close_code is None
        await client.close()

    run(scenario())


def test_cloud_settings_guard_both_channels_redis_pitfalls():
    """Read from cloud mode's settings, in a process of their own: no read timeout on the layer's
    Redis connections, and a capacity well above channels' default of 100."""
    script = (
        "import json; from channels.layers import get_channel_layer; layer = get_channel_layer(); "
        "pool = layer.create_pool(0); "
        "print(json.dumps({'timeout': pool.connection_kwargs.get('socket_timeout', 'unset'), "
        "'capacity': layer.capacity}))"
    )
    # Nothing here connects: the database and the provider are named, never reached.
    settings_only = {
        "KAHN_MODE": "cloud",
        "DATABASE_URL": "postgres://nobody@127.0.0.1:9/unused",
        "DJANGO_SECRET_KEY": "x" * 50,
        "REDIS_URL": "redis://127.0.0.1:6379/14",
        **OIDC_NEVER_CALLED,
    }
    finished = manage("shell", "-c", script, env=manage_env(**settings_only))
    assert finished.returncode == 0, finished.stderr
    assert json.loads(finished.stdout.splitlines()[-1]) == {"timeout": None, "capacity": 1000}


@pytest.mark.postgres
def test_a_burst_beyond_channels_default_capacity_to_one_replica_loses_nothing(
    cloud_url, keys, world, service_role, tmp_path
):
    """An import of 300 runs publishes 300 run messages at once to the one replica whose three
    sockets follow them (a replica's sockets share one Redis list): more than channels' default
    capacity of 100. Each run gets one message, so a dropped one would be missing for good."""
    runs = [f"burst_{n:03d}" for n in range(300)]
    for run_id in runs:
        write_archive_run(tmp_path, run_id, [event(seq, run_id) for seq in range(3)])
    env = cloud_env(service_role)

    async def scenario():
        clients = [await LiveClient.open(cloud_url, key=keys["acme"]) for _ in range(3)]
        for n, run_id in enumerate(runs):
            await clients[n % 3].subscribe(run_id=run_id, after_seq=-1)
        imported = await asyncio.to_thread(
            manage, "ingest_archive", str(tmp_path), "--tenant", "acme", env=env
        )
        assert imported.returncode == 0, imported.stderr
        for n, client in enumerate(clients):
            mine = runs[n::3]
            # A bound for a machine busy with other tests (messages stay in Redis for channels'
            # expiry of 60 s): a lost message is missing for good, and fails the test at any patience.
            await client.until(
                lambda client=client, mine=mine: all(len(client.seqs[r]) >= 3 for r in mine), timeout=60
            )
            assert {run_id: client.seqs[run_id] for run_id in mine} == {run_id: [0, 1, 2] for run_id in mine}
            await client.close()

    run(scenario())


@pytest.mark.postgres
def test_a_group_of_250_sockets_gets_every_event(cloud_url, keys):
    """Large groups (200 to 400 members) were reported to drop messages (channels_redis#62)."""

    async def scenario():
        clients = await asyncio.gather(*(LiveClient.open(cloud_url, key=keys["acme"]) for _ in range(250)))
        await asyncio.gather(*(client.subscribe(run_id="crowd", after_seq=-1) for client in clients))
        for first in range(0, 30, 3):
            batch = [event(seq, "crowd") for seq in range(first, first + 3)]
            await asyncio.to_thread(post_events, cloud_url, "crowd", batch, key=keys["acme"])
        await asyncio.gather(
            *(client.until(lambda c=client: len(c.seqs["crowd"]) >= 30) for client in clients)
        )
        assert all(client.seqs["crowd"] == list(range(30)) for client in clients)
        await asyncio.gather(*(client.close() for client in clients))

    run(scenario())


@pytest.mark.postgres
def test_ingest_archive_follow_in_cloud_pushes_every_line_to_the_replicas(
    cloud_url, keys, world, service_role, tmp_path
):
    (tmp_path / "runs").mkdir()
    follow = subprocess.Popen(
        [
            sys.executable,
            str(PROJECT / "manage.py"),
            "ingest_archive",
            str(tmp_path),
            "--tenant",
            "acme",
            "--follow",
            "--interval",
            "0.1",
        ],
        env=cloud_env(service_role),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        async def scenario():
            client = await LiveClient.open(cloud_url, key=keys["acme"])
            await client.subscribe(run_id="followed", after_seq=-1)
            await produce_live(tmp_path, "followed")
            lines = lines_of(tmp_path, "followed")
            await client.until(lambda: len(client.seqs["followed"]) >= lines, timeout=PATIENCE)
            assert client.seqs["followed"] == list(range(lines))
            await client.close()

        run(scenario())
    finally:
        follow.terminate()
        _, errors = follow.communicate(timeout=30)
    assert "Traceback" not in errors
