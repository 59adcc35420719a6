"""Whom a /ws/live socket acts for in cloud mode (in process): an API key or a session on the
handshake, 4401 otherwise; never another tenant's runs; closed when its credential ends.

The sockets are served by the real ASGI application in a loop of the test's own; HTTP requests go
through cloud mode's middleware (the `cloud` client) in the test's thread, as a server's would.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone

from kahn_site.asgi import application
from tenants.context import tenant_atomic
from tenants.models import ApiKey, Membership
from tenants.services import api_key_create, api_key_revoke
from tests.runs.test_live_socket import PATIENCE, event, events_until, ndjson, receive, subscribe

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def cloud_sockets(cloud, settings):
    """Cloud mode for sockets too: who they act for comes from a key or a session."""
    settings.KAHN_SOCKET_IDENTITY = "tenants.sockets.cloud_socket_identity"
    return cloud


def live(scenario: Callable[[], Awaitable[None]]) -> None:
    async_to_sync(scenario)()


def key_for(tenant) -> tuple[ApiKey, str]:
    return api_key_create(tenant=tenant, name="ci")


def expire(api_key: ApiKey) -> None:
    with tenant_atomic(api_key.tenant):
        ApiKey.objects.filter(pk=api_key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))


async def open_socket(*, key: str | None = None, client=None, **headers: str) -> WebsocketCommunicator:
    pairs = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1")]
    if key is not None:
        pairs.append((b"authorization", f"Bearer {key}".encode()))
    if client is not None:
        cookie = f"sessionid={client.cookies['sessionid'].value}"
        pairs.append((b"cookie", cookie.encode()))
    pairs += [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    socket = WebsocketCommunicator(application, "/ws/live", headers=pairs)
    connected, _ = await socket.connect(timeout=PATIENCE)
    assert connected
    return socket


async def closed_with(socket: WebsocketCommunicator) -> int:
    """The close code the server ends the socket with (waiting for it, skipping nothing else)."""
    message = await socket.receive_output(timeout=PATIENCE)
    assert message["type"] == "websocket.close", message
    return message["code"]


async def post(client, key: str, run_id: str, first: int, count: int) -> None:
    body = ndjson([event(seq, run_id) for seq in range(first, first + count)])
    response = await sync_to_async(client.post)(
        f"/api/v1/runs/{run_id}/events",
        data=body,
        content_type="application/x-ndjson",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )
    assert response.status_code == 200, response.content


@pytest.mark.parametrize(
    "credentials",
    [
        {},
        {"authorization": "Bearer kahn_live_sk_nobody_0123456789abcdef0123456789abcdef"},
        {"authorization": "Bearer not-a-key"},
        {"authorization": "Basic YWxpY2U6c2VjcmV0"},
        {"cookie": "sessionid=forged"},
    ],
    ids=["nothing", "unknown-key", "malformed-key", "basic-auth", "forged-session"],
)
def test_a_handshake_without_valid_credentials_is_closed_with_4401(cloud_sockets, world, credentials):
    async def scenario():
        socket = await open_socket(**credentials)
        assert await closed_with(socket) == 4401

    live(scenario)


def test_revoked_and_expired_keys_are_refused_at_the_handshake(cloud_sockets, world):
    revoked, revoked_key = key_for(world.acme)
    api_key_revoke(api_key=revoked)
    expired, expired_key = key_for(world.acme)
    expire(expired)

    async def scenario():
        for key in (revoked_key, expired_key):
            assert await closed_with(await open_socket(key=key)) == 4401

    live(scenario)


def test_a_key_sees_its_own_tenants_events_and_rows_and_never_anothers(cloud_sockets, world):
    _, acme_key = key_for(world.acme)
    _, globex_key = key_for(world.globex)

    async def scenario():
        await post(cloud_sockets, globex_key, "globex_only", 0, 3)
        socket = await open_socket(key=acme_key)
        # Another tenant's run, asked for by its id: nothing stored, nothing live.
        assert await subscribe(socket, run_id="globex_only", after_seq=-1) == []
        # The same run id in both tenants, and every row of the tenant.
        assert await subscribe(socket, run_id="nightly", after_seq=-1) == []
        assert await subscribe(socket, runs="*") == []
        await post(cloud_sockets, globex_key, "nightly", 0, 4)
        await post(cloud_sockets, globex_key, "globex_only", 3, 1)
        assert await socket.receive_nothing(timeout=0.5)

        await post(cloud_sockets, acme_key, "nightly", 0, 2)
        received = [await receive(socket), await receive(socket)]
        events = next(m for m in received if m["type"] == "events")
        row = next(m for m in received if m["type"] == "run")
        assert [e["seq"] for e in events["events"]] == [0, 1]
        assert row["run"]["run_id"] == "nightly" and row["run"]["total_nodes"] == 1
        assert await socket.receive_nothing(timeout=0.3)
        await socket.disconnect()

    live(scenario)


def test_a_session_acts_for_the_tenant_a_page_would(cloud_sockets, world):
    _, acme_key = key_for(world.acme)
    _, globex_key = key_for(world.globex)
    cloud_sockets.force_login(world.carol)

    async def scenario():
        await post(cloud_sockets, acme_key, "nightly", 0, 2)
        await post(cloud_sockets, globex_key, "nightly", 0, 3)
        # Carol's first membership is acme; the header chooses among her tenants.
        socket = await open_socket(client=cloud_sockets)
        assert len(await subscribe(socket, run_id="nightly", after_seq=-1)) == 2
        await socket.disconnect()
        socket = await open_socket(client=cloud_sockets, **{"X-Organization": "globex"})
        assert len(await subscribe(socket, run_id="nightly", after_seq=-1)) == 3
        await socket.disconnect()

    live(scenario)


def test_a_session_outside_the_organization_asked_for_or_any_is_refused_with_4403(cloud_sockets, world):
    loner = get_user_model().objects.create_user(username="loner", email="loner@example.com")

    async def refused(**headers: str) -> int:
        return await closed_with(await open_socket(client=cloud_sockets, **headers))

    cloud_sockets.force_login(world.alice)
    assert async_to_sync(refused)(**{"X-Organization": "globex"}) == 4403
    assert async_to_sync(refused)(**{"X-Organization": "initech"}) == 4403
    cloud_sockets.force_login(loner)
    assert async_to_sync(refused)() == 4403


def test_revoking_a_key_closes_its_sockets_at_once(cloud_sockets, world):
    api_key, key = key_for(world.acme)
    _, other_key = key_for(world.acme)

    async def scenario():
        socket = await open_socket(key=key)
        other = await open_socket(key=other_key)
        await subscribe(socket, runs="*")
        await sync_to_async(api_key_revoke)(api_key=api_key)
        assert await closed_with(socket) == 4401
        # Only that key's: the tenant's other key keeps its socket.
        assert await other.receive_nothing(timeout=0.3)
        await other.disconnect()

    live(scenario)


def test_signing_out_closes_the_sessions_sockets(cloud_sockets, world):
    cloud_sockets.force_login(world.alice)

    async def scenario():
        socket = await open_socket(client=cloud_sockets)
        await subscribe(socket, runs="*")
        response = await sync_to_async(cloud_sockets.post)("/oidc/logout/")
        assert response.status_code == 302
        assert await closed_with(socket) == 4401

    live(scenario)


def test_open_sockets_check_their_credential_again(cloud_sockets, world, settings):
    """What has no moment of its own (an expiry, a membership removed) is found by the recheck."""
    settings.KAHN_LIVE_RECHECK_SECONDS = 0.1
    api_key, key = key_for(world.acme)
    cloud_sockets.force_login(world.carol)

    async def scenario():
        by_key = await open_socket(key=key)
        by_session = await open_socket(client=cloud_sockets)
        assert await by_key.receive_nothing(timeout=0.4)
        assert await by_session.receive_nothing(timeout=0.1)

        await sync_to_async(expire)(api_key)
        assert await closed_with(by_key) == 4401

        def remove_carol_from_acme() -> None:
            with tenant_atomic(world.acme):
                Membership.objects.filter(tenant=world.acme, user=world.carol).delete()

        await sync_to_async(remove_carol_from_acme)()
        assert await closed_with(by_session) == 4401

    live(scenario)


@pytest.mark.postgres
@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL (row-level security)")
def test_sockets_read_under_row_level_security_as_the_service_role(cloud_sockets, world, as_service):
    """The service role sees only the bound tenant's rows: the socket's reads bind it."""
    _, acme_key = key_for(world.acme)
    _, globex_key = key_for(world.globex)

    async def scenario():
        await post(cloud_sockets, acme_key, "nightly", 0, 3)
        await post(cloud_sockets, globex_key, "nightly", 0, 5)
        socket = await open_socket(key=acme_key)
        stored = await subscribe(socket, run_id="nightly", after_seq=0)
        assert [e["seq"] for e in stored] == [1, 2]
        await post(cloud_sockets, acme_key, "nightly", 3, 1)
        assert await events_until(socket, 4) == [3]
        await socket.disconnect()

    live(scenario)
