"""Machine clients read with the provider's OIDC access tokens (SPEC section 8), through cloud mode's
middleware and the real read API (in process), against a real provider's token side on loopback:
JWTs checked against its JWKS, opaque tokens by its introspection endpoint.

What is refused is refused with 401 `invalid_token` in the shape of SPEC section 11, saying why; a
token only reads.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest
import requests
import websockets
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.core.cache import cache

from kahn_site.asgi import application
from runs.models import Run
from tenants.access_tokens import INTROSPECTION_CACHE_SECONDS, introspection_cache_seconds
from tenants.context import tenant_atomic
from tenants.models import Identity
from tests.conftest import manage, manage_env, scope_server
from tests.runs.live_client import LiveClient
from tests.runs.test_live_socket import PATIENCE, event, events_until, ndjson, subscribe
from tests.tenants.conftest import cloud_server_env
from tests.tenants.test_settings import CLOUD_ENV
from tests.tenants.test_sockets import closed_with, key_for, live, post
from tests.tenants.token_provider import AUDIENCE, CLIENT_ID, CLIENT_SECRET, b64url, rsa_key, token_provider


@pytest.fixture
def provider():
    with token_provider() as provider:
        yield provider


@pytest.fixture
def tokens(cloud, settings, provider):
    """Cloud mode accepting the provider's access tokens for the audience `kahn-scope-api`."""
    settings.OIDC_OP_ISSUER = provider.issuer
    settings.OIDC_API_AUDIENCE = AUDIENCE
    settings.OIDC_OP_JWKS_ENDPOINT = provider.jwks_url
    settings.OIDC_OP_INTROSPECTION_ENDPOINT = provider.introspection_url
    settings.OIDC_RP_CLIENT_ID = CLIENT_ID
    settings.OIDC_RP_CLIENT_SECRET = CLIENT_SECRET
    settings.OIDC_TIMEOUT = 5
    return cloud


@pytest.fixture
def signed_in(world_runs):
    """alice and carol have signed in before: the provider's subs are theirs."""
    Identity.objects.create(user=world_runs.alice, sub="alice-sub")
    Identity.objects.create(user=world_runs.carol, sub="carol-sub")
    return world_runs


def read(client, token: str, path: str = "/api/v1/runs/", **headers: str):
    return client.get(path, headers={"Authorization": f"Bearer {token}", **headers})


def run_ids(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [row["run_id"] for row in response.json()["results"]]


def refusal(response, status: int = 401) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    return error


# ---------------------------------------------------------------- JWTs


def test_a_valid_jwt_reads_its_users_tenant_and_never_anothers(tokens, provider, signed_in):
    token = provider.mint("alice-sub")
    assert run_ids(read(tokens, token)) == ["acme_nightly"]
    assert read(tokens, token, "/api/v1/runs/acme_nightly/").json()["run_id"] == "acme_nightly"
    assert read(tokens, token, "/api/v1/runs/globex_nightly/").status_code == 404
    # The tenant is chosen as for a session: X-Organization among the user's, else the first.
    carols = provider.mint("carol-sub")
    assert run_ids(read(tokens, carols)) == ["acme_nightly"]
    assert run_ids(read(tokens, carols, **{"X-Organization": "globex"})) == ["globex_nightly"]
    denied = refusal(read(tokens, token, **{"X-Organization": "globex"}), 403)
    assert denied["code"] == "permission_denied" and "globex" in denied["message"]


def test_a_token_is_its_subjects_whatever_session_rides_along(tokens, provider, signed_in):
    tokens.force_login(signed_in.carol)
    response = tokens.get(
        "/api/v1/runs/",
        headers={"Authorization": f"Bearer {provider.mint('alice-sub')}", "X-Organization": "globex"},
    )
    assert refusal(response, 403)["code"] == "permission_denied"


def forged_none(provider, sub: str) -> str:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT", "kid": provider.kid}).encode())
    payload = b64url(json.dumps(provider.claims(sub)).encode())
    return f"{header}.{payload}."


def tampered(provider, sub: str) -> str:
    """A valid token of alice's whose payload now names `sub`, its signature kept."""
    header, payload, signature = provider.mint("alice-sub").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = sub
    return f"{header}.{b64url(json.dumps(claims).encode())}.{signature}"


def hs256_with_the_public_key(provider) -> str:
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": provider.kid}).encode())
    return f"{header}.{b64url(json.dumps(provider.claims('alice-sub')).encode())}.{b64url(b'x' * 32)}"


BAD_JWTS = {
    "expired": (lambda p: p.mint("alice-sub", exp=int(time.time()) - 300), "has expired"),
    "another-audience": (lambda p: p.mint("alice-sub", aud="another-api"), "not for this API"),
    "another-issuer": (lambda p: p.mint("alice-sub", iss="https://elsewhere.example"), "not issued by"),
    "not-yet-valid": (lambda p: p.mint("alice-sub", nbf=int(time.time()) + 600), "not valid yet"),
    "no-expiry": (lambda p: p.mint("alice-sub", exp=None), "'exp'"),
    # The provider's kid, another key's signature: someone who knows the kid, not the key.
    "another-key": (lambda p: p.mint("alice-sub", key=rsa_key(), kid=p.kid), "signature does not verify"),
    "alg-none": (lambda p: forged_none(p, "alice-sub"), "'none'"),
    "hs256": (hs256_with_the_public_key, "'HS256'"),
    "tampered": (lambda p: tampered(p, "carol-sub"), "signature does not verify"),
    "unknown-kid": (lambda p: p.mint("alice-sub", key=rsa_key(), kid="not-the-providers"), "kid"),
    "garbage": (lambda p: "a.b.c", "not a well-formed JWT"),
}


@pytest.mark.parametrize("case", BAD_JWTS, ids=list(BAD_JWTS))
def test_a_bad_jwt_is_refused_with_401_saying_why(tokens, provider, signed_in, case):
    make, why = BAD_JWTS[case]
    response = read(tokens, make(provider))
    error = refusal(response)
    assert error["code"] == "invalid_token"
    assert why in error["message"], error["message"]
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="kahn", error="invalid_token"'
    assert "acme_nightly" not in response.content.decode()


def test_a_rotated_key_is_fetched_once_and_its_tokens_accepted(tokens, provider, signed_in, settings):
    settings.OIDC_JWKS_REFETCH_COOLDOWN_SECONDS = 0
    assert run_ids(read(tokens, provider.mint("alice-sub"))) == ["acme_nightly"]
    assert run_ids(read(tokens, provider.mint("alice-sub"))) == ["acme_nightly"]
    assert provider.jwks_fetches == 1  # the key set is kept

    provider.rotate()
    assert run_ids(read(tokens, provider.mint("alice-sub"))) == ["acme_nightly"]
    assert provider.jwks_fetches == 2  # one fetch for the new kid
    assert run_ids(read(tokens, provider.mint("alice-sub"))) == ["acme_nightly"]
    assert provider.jwks_fetches == 2


def test_made_up_kids_cost_the_provider_at_most_one_fetch_per_cooldown(tokens, provider, signed_in):
    assert run_ids(read(tokens, provider.mint("alice-sub"))) == ["acme_nightly"]
    for n in range(5):
        forged = provider.mint("alice-sub", key=rsa_key(), kid=f"made-up-{n}")
        assert refusal(read(tokens, forged))["code"] == "invalid_token"
    # The first fetch started the cooldown (30 s): made-up kids within it fetch nothing.
    assert provider.jwks_fetches == 1


def test_a_valid_token_of_someone_who_never_signed_in_is_403(tokens, provider, signed_in):
    error = refusal(read(tokens, provider.mint("stranger-sub")), 403)
    assert "signed in" in error["message"]


def test_a_token_only_reads(tokens, provider, signed_in):
    token = provider.mint("alice-sub")
    body = ndjson([event(0, "by_token")])
    writes = [
        tokens.post(
            "/api/v1/runs/by_token/events",
            data=body,
            content_type="application/x-ndjson",
            headers={"Authorization": f"Bearer {token}"},
        ),
        tokens.put(
            "/api/v1/runs/acme_nightly/summary",
            data="{}",
            content_type="application/json",
            headers={"Authorization": f"Bearer {token}"},
        ),
    ]
    for response in writes:
        error = refusal(response, 403)
        assert error["code"] == "insufficient_scope" and "API key" in error["message"]
    with tenant_atomic(signed_in.acme):
        assert not Run.objects.filter(run_id="by_token").exists()
    # Pages are for people: a token opens none.
    assert refusal(read(tokens, token, "/"), 403)["code"] == "insufficient_scope"


def test_an_unreachable_key_set_is_503_not_a_bad_token(tokens, provider, signed_in, settings):
    settings.OIDC_OP_JWKS_ENDPOINT = "http://127.0.0.1:9/jwks"
    error = refusal(read(tokens, provider.mint("alice-sub")), 503)
    assert error["code"] == "provider_unavailable"


def test_without_an_issuer_and_audience_every_bearer_credential_is_an_api_key(
    cloud, provider, signed_in, settings
):
    settings.OIDC_OP_JWKS_ENDPOINT = provider.jwks_url
    error = refusal(read(cloud, provider.mint("alice-sub")))
    assert error["code"] == "invalid_api_key"
    assert provider.jwks_fetches == 0


def test_an_api_key_still_reads_beside_tokens(tokens, provider, signed_in):
    from tenants.services import api_key_create

    _, key = api_key_create(tenant=signed_in.globex, name="ci")
    assert run_ids(read(tokens, key)) == ["globex_nightly"]
    # A key-shaped credential that is no key stays a key's refusal, never a token's.
    assert refusal(read(tokens, key[:-4] + "zzzz"))["code"] == "invalid_api_key"


def test_the_cloud_schema_names_access_tokens_beside_keys_and_sessions():
    env = {k: v for k, v in manage_env().items() if k != "DATABASE_URL"}
    env.update(CLOUD_ENV, OIDC_OP_ISSUER="https://airlock.example", OIDC_API_AUDIENCE=AUDIENCE)
    result = manage("spectacular", "--format", "openapi-json", env=env)
    assert result.returncode == 0, result.stderr
    schemes = json.loads(result.stdout)["components"]["securitySchemes"]
    assert set(schemes) == {"apiKey", "oidcAccessToken", "cookieAuth"}
    assert schemes["oidcAccessToken"]["scheme"] == "bearer"


# ---------------------------------------------------------------- opaque tokens, by introspection


def test_an_active_opaque_token_reads_and_its_answer_is_kept(tokens, provider, signed_in):
    token = provider.issue_opaque("carol-sub")
    assert run_ids(read(tokens, token, **{"X-Organization": "globex"})) == ["globex_nightly"]
    assert run_ids(read(tokens, token)) == ["acme_nightly"]
    assert provider.introspections == 1  # the second read asked nothing

    # Revoked at the provider: the kept answer still holds, for at most a minute...
    provider.opaque[token]["active"] = False
    assert run_ids(read(tokens, token)) == ["acme_nightly"]
    assert provider.introspections == 1
    # ... and once it is gone, the provider is asked again.
    cache.clear()
    assert refusal(read(tokens, token))["code"] == "invalid_token"
    assert provider.introspections == 2


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ({"active": False}, "not active"),
        ({"aud": "another-api"}, "not for this API"),
        ({"aud": None}, "not for this API"),
        ({"iss": "https://elsewhere.example"}, "not issued by"),
        ({"exp": int(time.time()) - 300}, "has expired"),
        ({"sub": None}, "names no sub"),
    ],
    ids=["inactive", "another-audience", "no-audience", "another-issuer", "expired", "no-sub"],
)
def test_an_opaque_token_the_provider_does_not_vouch_for_is_401(tokens, provider, signed_in, answer, why):
    token = provider.issue_opaque("alice-sub")
    provider.opaque[token].update(answer)
    provider.opaque[token] = {k: v for k, v in provider.opaque[token].items() if v is not None}
    error = refusal(read(tokens, token))
    assert error["code"] == "invalid_token" and why in error["message"], error["message"]


def test_an_unknown_opaque_token_is_inactive_and_its_answer_is_kept_too(tokens, provider, signed_in):
    for _ in range(3):
        assert "not active" in refusal(read(tokens, "made-up-opaque-token"))["message"]
    assert provider.introspections == 1


def test_introspection_uses_the_relying_partys_credentials(tokens, provider, signed_in, settings):
    settings.OIDC_RP_CLIENT_SECRET = "not-the-secret"
    token = provider.issue_opaque("alice-sub")
    assert refusal(read(tokens, token), 503)["code"] == "provider_unavailable"


def test_without_an_introspection_endpoint_an_opaque_token_is_401(tokens, provider, signed_in, settings):
    settings.OIDC_OP_INTROSPECTION_ENDPOINT = ""
    error = refusal(read(tokens, provider.issue_opaque("alice-sub")))
    assert "not a JWT" in error["message"] and provider.introspections == 0


def test_an_answer_is_kept_for_the_tokens_remaining_life_at_most_a_minute():
    now = 1_000_000.0
    assert (
        introspection_cache_seconds({"active": True, "exp": now + 3600}, now=now)
        == INTROSPECTION_CACHE_SECONDS
    )
    assert introspection_cache_seconds({"active": True, "exp": now + 20}, now=now) == 20
    assert introspection_cache_seconds({"active": True, "exp": now - 5}, now=now) == 0
    assert introspection_cache_seconds({"active": True}, now=now) == INTROSPECTION_CACHE_SECONDS
    assert introspection_cache_seconds({"active": False}, now=now) == INTROSPECTION_CACHE_SECONDS


# ---------------------------------------------------------------- /ws/live


@pytest.fixture
def token_sockets(tokens, settings):
    settings.KAHN_SOCKET_IDENTITY = "tenants.sockets.cloud_socket_identity"
    return tokens


async def token_socket(token: str, **headers: str) -> WebsocketCommunicator:
    """A machine client's socket: its token, and no Origin (nor Host) at all."""
    pairs = [(b"authorization", f"Bearer {token}".encode())]
    pairs += [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    socket = WebsocketCommunicator(application, "/ws/live", headers=pairs)
    connected, _ = await socket.connect(timeout=PATIENCE)
    assert connected
    return socket


@pytest.mark.django_db(transaction=True)
def test_a_token_opens_live_without_origin_and_follows_its_tenant_only(token_sockets, provider, signed_in):
    _, acme_key = key_for(signed_in.acme)
    _, globex_key = key_for(signed_in.globex)

    async def scenario():
        socket = await token_socket(provider.mint("carol-sub"), **{"X-Organization": "globex"})
        assert await subscribe(socket, run_id="nightly", after_seq=-1) == []
        await post(token_sockets, acme_key, "nightly", 0, 2)
        await post(token_sockets, globex_key, "nightly", 0, 3)
        assert await events_until(socket, 3) == [0, 1, 2]
        assert await socket.receive_nothing(timeout=0.3)
        await socket.disconnect()

    live(scenario)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("case", "code"),
    [("expired", 4401), ("alg-none", 4401), ("another-audience", 4401), ("tampered", 4401)],
)
def test_a_bad_token_is_closed_with_4401(token_sockets, provider, signed_in, case, code):
    token = BAD_JWTS[case][0](provider)

    async def scenario():
        assert await closed_with(await token_socket(token)) == code

    live(scenario)


@pytest.mark.django_db(transaction=True)
def test_a_token_outside_the_organization_asked_for_or_of_a_stranger_is_closed_with_4403(
    token_sockets, provider, signed_in
):
    async def scenario():
        alices = await token_socket(provider.mint("alice-sub"), **{"X-Organization": "globex"})
        assert await closed_with(alices) == 4403
        assert await closed_with(await token_socket(provider.mint("stranger-sub"))) == 4403

    live(scenario)


@pytest.mark.django_db(transaction=True)
def test_a_token_socket_ends_when_the_provider_revokes_the_token(
    token_sockets, provider, signed_in, settings
):
    settings.KAHN_LIVE_RECHECK_SECONDS = 0.1
    token = provider.issue_opaque("alice-sub")

    async def scenario():
        socket = await token_socket(token)
        await subscribe(socket, runs="*")
        assert await socket.receive_nothing(timeout=0.4)  # rechecked, from the kept answer
        provider.opaque[token]["active"] = False
        await sync_to_async(cache.clear)()  # the kept answer runs out
        assert await closed_with(socket) == 4401

    live(scenario)


# ---------------------------------------------------------------- a served Scope (PostgreSQL)


@pytest.fixture(scope="module")
def served_provider():
    with token_provider() as provider:
        yield provider


@pytest.fixture(scope="module")
def token_server(service_role, served_provider, django_db_blocker):
    """Scope in cloud mode, served by `manage.py serve` as the service role, accepting the tokens."""
    with django_db_blocker.unblock():
        env = cloud_server_env(
            service_role,
            OIDC_OP_ISSUER=served_provider.issuer,
            OIDC_API_AUDIENCE=AUDIENCE,
            OIDC_OP_JWKS_ENDPOINT=served_provider.jwks_url,
            OIDC_OP_INTROSPECTION_ENDPOINT=served_provider.introspection_url,
            OIDC_RP_CLIENT_ID=CLIENT_ID,
            OIDC_RP_CLIENT_SECRET=CLIENT_SECRET,
            OIDC_TIMEOUT="5",
        )
    with scope_server(env, "--host", "127.0.0.1") as url:
        yield url


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_machine_reads_a_served_scope_with_tokens_and_writes_nothing(
    token_server, served_provider, signed_in
):
    def get(token: str, path: str = "/api/v1/runs/") -> requests.Response:
        return requests.get(f"{token_server}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=10)

    assert run_ids(get(served_provider.mint("alice-sub"))) == ["acme_nightly"]
    assert run_ids(get(served_provider.issue_opaque("alice-sub"))) == ["acme_nightly"]
    for token in (
        served_provider.mint("alice-sub", exp=int(time.time()) - 300),
        forged_none(served_provider, "alice-sub"),
    ):
        refused = get(token)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_token"
    write = requests.post(
        f"{token_server}/api/v1/runs/by_token/events",
        data=ndjson([event(0, "by_token")]),
        headers={
            "Authorization": f"Bearer {served_provider.mint('alice-sub')}",
            "Content-Type": "application/x-ndjson",
        },
        timeout=10,
    )
    assert write.status_code == 403 and write.json()["error"]["code"] == "insufficient_scope"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_token_opens_a_served_live_socket_without_origin(token_server, served_provider, signed_in):
    async def scenario():
        connection = await websockets.connect(
            token_server.replace("http", "ws", 1) + "/ws/live",
            origin=None,
            additional_headers={
                "Authorization": f"Bearer {served_provider.mint('carol-sub')}",
                "X-Organization": "globex",
            },
            open_timeout=PATIENCE,
        )
        client = LiveClient(connection)
        await client.subscribe(run_id="globex_nightly", after_seq=-1)
        assert client.seqs["globex_nightly"] == list(range(6))
        await client.subscribe(run_id="acme_nightly", after_seq=-1)
        assert client.seqs["acme_nightly"] == []  # carol's other tenant, not asked for
        await client.close()

        refused = await websockets.connect(
            token_server.replace("http", "ws", 1) + "/ws/live",
            origin=None,
            additional_headers={"Authorization": f"Bearer {forged_none(served_provider, 'carol-sub')}"},
            open_timeout=PATIENCE,
        )
        with pytest.raises(websockets.ConnectionClosed):
            await refused.recv()
        assert refused.close_code == 4401

    asyncio.run(scenario())


# ---------------------------------------------------------------- settings


def check_cloud(**extra: str):
    env = {k: v for k, v in manage_env().items() if k != "DATABASE_URL"}
    return manage("check", env={**env, **CLOUD_ENV, **extra})


@pytest.mark.parametrize(
    "extra",
    [
        {"OIDC_OP_ISSUER": "https://airlock.example"},
        {"OIDC_API_AUDIENCE": AUDIENCE},
        {"OIDC_OP_INTROSPECTION_ENDPOINT": "https://airlock.example/introspect"},
    ],
    ids=["issuer-alone", "audience-alone", "introspection-alone"],
)
def test_access_tokens_need_an_issuer_and_an_audience_together(extra):
    result = check_cloud(**extra)
    assert result.returncode != 0
    assert "OIDC_OP_ISSUER and OIDC_API_AUDIENCE" in result.stderr


def test_access_token_settings_together_start():
    result = check_cloud(
        OIDC_OP_ISSUER="https://airlock.example",
        OIDC_API_AUDIENCE=AUDIENCE,
        OIDC_OP_INTROSPECTION_ENDPOINT="https://airlock.example/introspect",
        KAHN_SITE_ORIGINS="https://scope.example.com,https://scope.example.com:8443",
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "origin", ["scope.example.com", "ftp://scope.example.com", "https://scope.example.com/app"]
)
def test_a_site_origin_that_is_not_one_is_refused_at_start(origin):
    result = check_cloud(KAHN_SITE_ORIGINS=origin)
    assert result.returncode != 0
    assert f"KAHN_SITE_ORIGINS: {origin!r} is not an origin" in result.stderr
