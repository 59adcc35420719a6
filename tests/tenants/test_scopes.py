"""Who may write runs and who may read them (SPEC section 8), in cloud mode through the test client
and the real ASGI application: API keys act within their scopes (`ingest`, `read`; none named means
both), and runs are written by keys alone, never by a browser session, whatever its role."""

from __future__ import annotations

from io import StringIO

import orjson
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from runs.models import Event, Run
from tenants.context import tenant_scope
from tenants.models import ApiKey
from tenants.services import TenancyError, api_key_create
from tests.conftest import run_record
from tests.tenants.test_sockets import live, open_socket, subscribe

T = "2026-11-20T10:00:00.000Z"
GRAPH = {"version": 1, "nodes": [{"id": "build", "deps": []}]}
SUMMARY = {"run_id": "scoped", "outcome": "clean"}


def events_body(run_id: str) -> bytes:
    return orjson.dumps({"ts": T, "event": "run_start", "run_id": run_id}) + b"\n"


def bearer(key: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


def write_events(client: Client, run_id: str, **headers: str):
    return client.post(
        f"/api/v1/runs/{run_id}/events",
        data=events_body(run_id),
        content_type="application/x-ndjson",
        **headers,
    )


def put(client: Client, run_id: str, kind: str, document: dict, **headers: str):
    return client.put(
        f"/api/v1/runs/{run_id}/{kind}",
        data=orjson.dumps(document),
        content_type="application/json",
        **headers,
    )


def runs_of(tenant) -> list[str]:
    with tenant_scope(tenant):
        return sorted(Run.objects.values_list("run_id", flat=True))


def refused_for_scope(response, needed: str) -> str:
    assert response.status_code == 403, response.content
    error = response.json()["error"]
    assert error["code"] == "insufficient_scope"
    assert needed in error["message"], error["message"]
    return error["message"]


# ---------------------------------------------------------------- made with scopes


@pytest.mark.parametrize(
    ("asked", "stored"),
    [((), "ingest read"), (("ingest",), "ingest"), (("read",), "read"), (("read", "ingest"), "ingest read")],
)
def test_a_key_carries_the_scopes_it_was_made_with_and_none_named_means_both(world, asked, stored):
    api_key, _ = api_key_create(tenant=world.acme, name="ci", scopes=asked)
    assert api_key.scopes == stored
    with tenant_scope(world.acme):
        assert ApiKey.objects.get(pk=api_key.pk).scopes == stored


def test_an_unknown_scope_is_refused_by_name_and_no_key_is_made(world):
    with pytest.raises(TenancyError, match="no scope 'write'"):
        api_key_create(tenant=world.acme, name="ci", scopes=["ingest", "write"])
    with tenant_scope(world.acme):
        assert not ApiKey.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_create_api_key_takes_scopes_and_refuses_unknown_ones(world):
    out, err = StringIO(), StringIO()
    call_command("create_api_key", "acme", "--name", "reader", "--scope", "read", stdout=out, stderr=err)
    assert "scopes read" in err.getvalue()
    call_command("create_api_key", "acme", "--name", "both", stdout=StringIO(), stderr=err)
    assert "scopes ingest, read" in err.getvalue()
    with pytest.raises(CommandError, match="invalid choice: 'write'"):
        call_command("create_api_key", "acme", "--scope", "write", stdout=StringIO(), stderr=StringIO())
    with tenant_scope(world.acme):
        assert sorted(ApiKey.objects.values_list("name", "scopes")) == [
            ("both", "ingest read"),
            ("reader", "read"),
        ]


# ---------------------------------------------------------------- every combination, over HTTP

# What each scope set may do: write runs (events, graph, summary) and read them.
COMBINATIONS = [
    pytest.param(("ingest",), True, False, id="ingest-only"),
    pytest.param(("read",), False, True, id="read-only"),
    pytest.param(("ingest", "read"), True, True, id="both"),
    pytest.param((), True, True, id="none-means-both"),
]


@pytest.mark.parametrize(("scopes", "writes", "reads"), COMBINATIONS)
def test_a_key_writes_and_reads_only_within_its_scopes(cloud, world, scopes, writes, reads):
    run_record(world.acme, "acme_nightly")
    _, key = api_key_create(tenant=world.acme, name="ci", scopes=scopes)
    auth = bearer(key)

    responses = {
        "events": write_events(cloud, "scoped", **auth),
        "graph": put(cloud, "scoped", "graph", GRAPH, **auth),
        "summary": put(cloud, "scoped", "summary", SUMMARY, **auth),
    }
    for what, response in responses.items():
        if writes:
            assert response.status_code == 200, (what, response.content)
        else:
            message = refused_for_scope(response, "ingest")
            assert "may not send runs" in message
    assert runs_of(world.acme) == (["acme_nightly", "scoped"] if writes else ["acme_nightly"])

    reads_made = [
        cloud.get("/api/v1/runs/", **auth),
        cloud.get("/api/v1/runs/acme_nightly/", **auth),
        cloud.get("/api/v1/runs/acme_nightly/events", **auth),
        cloud.get("/api/v1/runs/acme_nightly/graph", **auth),
    ]
    for response in reads_made:
        if reads:
            assert response.status_code == 200, response.content
        else:
            assert "may not read runs" in refused_for_scope(response, "read")
    if reads:
        assert [row["run_id"] for row in reads_made[0].json()["results"]][-1] == "acme_nightly"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("scopes", "writes", "reads"), COMBINATIONS)
def test_live_updates_need_the_read_scope(cloud, settings, world, scopes, writes, reads):
    settings.KAHN_SOCKET_IDENTITY = "tenants.sockets.cloud_socket_identity"
    _, key = api_key_create(tenant=world.acme, name="ci", scopes=scopes)

    async def scenario():
        socket = await open_socket(key=key)
        if reads:
            assert await subscribe(socket, runs="*") == []
            await socket.disconnect()
        else:
            message = await socket.receive_output(timeout=10)
            assert (message["type"], message["code"]) == ("websocket.close", 4403)
            assert message["reason"].startswith("insufficient_scope")

    live(scenario)


# ---------------------------------------------------------------- sessions read, never write


def signed_in(user, tenant_slug: str | None = None) -> tuple[Client, str]:
    """A browser that checks CSRF as a real one is checked, signed in as `user`, with its CSRF token."""
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    headers = {"X-Organization": tenant_slug} if tenant_slug else {}
    assert browser.get("/", headers=headers).status_code == 200  # sets the CSRF cookie
    return browser, browser.cookies["csrftoken"].value


@pytest.mark.parametrize("who", ["member", "admin", "owner"])
def test_a_session_never_writes_runs_whatever_its_role(cloud, world, who):
    user, tenant = {
        "member": (world.carol, "acme"),
        "admin": (world.carol, "globex"),
        "owner": (world.alice, "acme"),
    }[who]
    browser, token = signed_in(user, tenant)
    headers = {"HTTP_X_CSRFTOKEN": token, "HTTP_X_ORGANIZATION": tenant}

    for response in (
        write_events(browser, "from_browser", **headers),
        put(browser, "from_browser", "graph", GRAPH, **headers),
        put(browser, "from_browser", "summary", SUMMARY, **headers),
    ):
        message = refused_for_scope(response, "ingest")
        assert "never by a signed-in session" in message
    assert runs_of(world.acme) == [] and runs_of(world.globex) == []
    with tenant_scope(world.acme):
        assert not Event.objects.exists()

    # The same session reads.
    assert browser.get("/api/v1/runs/", HTTP_X_ORGANIZATION=tenant).status_code == 200


def test_a_session_without_the_csrf_token_is_refused_before_its_scope_is_asked(cloud, world):
    browser, _ = signed_in(world.alice)
    response = write_events(browser, "from_browser")
    assert response.status_code == 403 and "CSRF" in response.json()["error"]["message"]
    assert runs_of(world.acme) == []


def test_oss_mode_still_takes_runs_from_the_local_producer(client, local_tenant):
    # OSS has no keys and no sign-in: the local operator's producer writes, as before.
    response = write_events(client, "local_run")
    assert response.status_code == 200, response.content
    with tenant_scope(local_tenant):
        assert Run.objects.filter(run_id="local_run").exists()


# ---------------------------------------------------------------- the keys page


@pytest.mark.parametrize(
    ("ticked", "stored"), [([], "ingest read"), (["read"], "read"), (["ingest", "read"], "ingest read")]
)
def test_the_keys_page_makes_a_key_with_the_scopes_ticked_and_lists_them(cloud, world, ticked, stored):
    from tests.tenants.test_keys_page import listed, shown_key

    cloud.force_login(world.alice)
    response = cloud.post("/keys/", {"name": "dashboards", "scopes": ticked})
    assert response.status_code == 200
    key = shown_key(response)
    with tenant_scope(world.acme):
        api_key = ApiKey.objects.get(name="dashboards")
    assert api_key.scopes == stored
    assert listed(cloud.get("/keys/").text, api_key)["scopes"] == stored
    runs = cloud.get("/api/v1/runs/", **bearer(key))
    assert runs.status_code == (200 if "read" in stored else 403)


def test_the_keys_page_refuses_an_unknown_scope_by_name(cloud, world):
    cloud.force_login(world.alice)
    response = cloud.post("/keys/", {"name": "dashboards", "scopes": ["admin"]})
    assert "Select a valid choice. admin is not one of the available choices." in response.text
    with tenant_scope(world.acme):
        assert not ApiKey.objects.exists()


@pytest.mark.parametrize(("scopes", "writes", "reads"), COMBINATIONS)
def test_pages_show_runs_to_a_key_only_if_it_may_read(cloud, world, scopes, writes, reads):
    run_record(world.acme, "acme_nightly")
    _, key = api_key_create(tenant=world.acme, name="ci", scopes=scopes)
    for path, shown in (("/", "acme_nightly"), ("/runs/acme_nightly/", "acme_nightly"), ("/nodes/", "build")):
        response = cloud.get(path, **bearer(key))
        if reads:
            assert response.status_code == 200 and shown in response.text, path
        else:
            assert "may not read them" in refused_for_scope(response, "read")
