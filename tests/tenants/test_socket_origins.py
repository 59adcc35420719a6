"""The `Origin` of a /ws/live handshake (SPEC section 7), through the real ASGI application (in process).

A socket that acts by the browser's session must come from one of the site's own origins: scheme,
host and port, the one the handshake came to (its Host, one of ALLOWED_HOSTS) or one of
KAHN_SITE_ORIGINS; anything else is refused at the handshake (HTTP 403), before the session is read.
A socket that sends `Authorization: Bearer` (a key or a token) needs no `Origin`: it acts by that
credential alone.
"""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator

from kahn_site.asgi import application
from tenants.services import api_key_create
from tests.runs.test_live_socket import PATIENCE

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def cloud_sockets(cloud, settings):
    settings.KAHN_SOCKET_IDENTITY = "tenants.sockets.cloud_socket_identity"
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    return cloud


def handshake(*, origin: str | None, host: str = "127.0.0.1:8080", scheme: str = "ws", **headers: str):
    """Opens /ws/live as a client at ws://{host}; returns (connected, socket or None)."""

    async def scenario():
        pairs = [(b"host", host.encode())]
        if origin is not None:
            pairs.append((b"origin", origin.encode()))
        pairs += [(name.lower().encode(), value.encode()) for name, value in headers.items()]
        socket = WebsocketCommunicator(application, "/ws/live", headers=pairs)
        socket.scope["scheme"] = scheme
        connected, _ = await socket.connect(timeout=PATIENCE)
        if not connected:
            return False, None
        # Whom it acts for: a refusal closes at once, an accepted socket answers a subscription.
        await socket.send_json_to({"action": "subscribe", "runs": "*"})
        reply = await socket.receive_output(timeout=PATIENCE)
        await socket.disconnect()
        return True, reply

    return async_to_sync(scenario)()


def session_cookie(client) -> str:
    return f"sessionid={client.cookies['sessionid'].value}"


def subscribed(result) -> bool:
    connected, reply = result
    return (
        connected
        and reply["type"] == "websocket.send"
        and json.loads(reply["text"])
        == {
            "type": "subscribed",
            "runs": "*",
        }
    )


@pytest.mark.parametrize(
    "origin",
    [
        "http://127.0.0.1:8080",  # the origin the handshake came to
        "HTTP://127.0.0.1:8080",  # the same, spelled otherwise
    ],
)
def test_a_session_from_the_sites_own_origin_connects(cloud_sockets, world, origin):
    cloud_sockets.force_login(world.alice)
    assert subscribed(handshake(origin=origin, cookie=session_cookie(cloud_sockets)))


@pytest.mark.parametrize(
    "origin",
    [
        "http://127.0.0.1:1",  # another port of the same host
        "http://127.0.0.1",  # port 80, not 8080
        "https://127.0.0.1:8080",  # another scheme
        "http://localhost:8080",  # another host, though an allowed one
        "https://evil.example",
        "null",  # a sandboxed frame or a file
        "http://127.0.0.1:notaport",
    ],
)
def test_a_session_from_any_other_origin_is_refused_at_the_handshake(cloud_sockets, world, origin):
    cloud_sockets.force_login(world.alice)
    assert handshake(origin=origin, cookie=session_cookie(cloud_sockets)) == (False, None)


def test_a_session_without_origin_is_refused_at_the_handshake(cloud_sockets, world):
    cloud_sockets.force_login(world.alice)
    assert handshake(origin=None, cookie=session_cookie(cloud_sockets)) == (False, None)


def test_a_host_that_is_not_the_sites_makes_no_origin_of_its_own(cloud_sockets, world):
    # A DNS name rebound to the server: the page's origin equals the Host, but the Host is not allowed.
    cloud_sockets.force_login(world.alice)
    result = handshake(
        origin="http://rebound.example:8080",
        host="rebound.example:8080",
        cookie=session_cookie(cloud_sockets),
    )
    assert result == (False, None)


def test_behind_tls_the_sites_origin_is_https(cloud_sockets, world):
    cloud_sockets.force_login(world.alice)
    cookie = session_cookie(cloud_sockets)
    secure = {"X-Forwarded-Proto": "https", "cookie": cookie}
    assert subscribed(handshake(origin="https://127.0.0.1:8080", **secure))
    assert handshake(origin="http://127.0.0.1:8080", **secure) == (False, None)
    assert subscribed(handshake(origin="https://127.0.0.1", host="127.0.0.1", scheme="wss", cookie=cookie))
    assert handshake(origin="http://127.0.0.1", host="127.0.0.1", scheme="wss", cookie=cookie) == (
        False,
        None,
    )


def test_kahn_site_origins_adds_the_sites_other_origins(cloud_sockets, world, settings):
    settings.KAHN_SITE_ORIGINS = ["https://scope.example.com"]
    cloud_sockets.force_login(world.alice)
    cookie = session_cookie(cloud_sockets)
    assert subscribed(handshake(origin="https://scope.example.com", cookie=cookie))
    assert subscribed(handshake(origin="https://scope.example.com:443", cookie=cookie))
    assert handshake(origin="https://scope.example.com:8443", cookie=cookie) == (False, None)
    assert handshake(origin="http://scope.example.com", cookie=cookie) == (False, None)


@pytest.mark.parametrize("origin", [None, "https://evil.example"])
def test_a_key_needs_no_origin_and_acts_by_itself_alone(cloud_sockets, world, origin):
    _, key = api_key_create(tenant=world.acme, name="ci")
    assert subscribed(handshake(origin=origin, authorization=f"Bearer {key}"))
    # The cookie riding along changes nothing: a bad key is refused, not replaced by the session.
    cloud_sockets.force_login(world.alice)
    connected, reply = handshake(
        origin=origin, authorization=f"Bearer {key[:-4]}zzzz", cookie=session_cookie(cloud_sockets)
    )
    assert connected and reply["type"] == "websocket.close" and reply["code"] == 4401


def test_oss_sockets_need_the_sites_origin_too(local_tenant):
    assert subscribed(handshake(origin="http://127.0.0.1:8080"))
    assert handshake(origin="http://127.0.0.1:9999") == (False, None)
    assert handshake(origin=None) == (False, None)
