"""Producers' API keys (SPEC section 5) in cloud mode: made once, stored hashed, scoped to a tenant."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import orjson
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone

from runs.models import Event, Run
from tenants.context import tenant_scope
from tenants.models import ApiKey
from tenants.services import API_KEY_PATTERN, TenancyError, api_key_authenticate, api_key_create
from tests.tenants.conftest import connected_as, database_dump

T = "2026-11-20T10:00:00.000Z"


def start(run_id: str) -> bytes:
    return orjson.dumps({"ts": T, "event": "run_start", "run_id": run_id}) + b"\n"


def post(client, key: str | None, run_id: str, body: bytes | None = None):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"} if key is not None else {}
    return client.post(
        f"/api/v1/runs/{run_id}/events",
        data=body or start(run_id),
        content_type="application/x-ndjson",
        **headers,
    )


def get(client, key: str, path: str):
    return client.get(path, HTTP_AUTHORIZATION=f"Bearer {key}")


def key_for(tenant, name: str = "ci") -> str:
    return api_key_create(tenant=tenant, name=name)[1]


@pytest.fixture
def keys(world):
    return {"acme": key_for(world.acme), "globex": key_for(world.globex)}


# ---------------------------------------------------------------- made once, stored hashed


@pytest.mark.django_db(transaction=True)
def test_create_api_key_prints_the_key_once_and_stores_only_its_hash(world):
    out, err = StringIO(), StringIO()
    call_command("create_api_key", "acme", "--name", "nightly", stdout=out, stderr=err)
    key = out.getvalue().strip()
    assert API_KEY_PATTERN.match(key) and key.startswith(f"kahn_live_sk_{world.acme.key_prefix}_")
    assert len(key.rsplit("_", 1)[1]) >= 32
    assert "shown this once" in err.getvalue()
    with tenant_scope(world.acme):
        stored = ApiKey.objects.get(tenant=world.acme)
    assert (stored.name, stored.last4) == ("nightly", key[-4:])
    assert key not in stored.key_hash and len(stored.key_hash) == 64
    assert key.rsplit("_", 1)[1] not in database_dump()


def test_a_tenant_has_at_most_its_plans_number_of_active_keys(world):
    plan = world.acme.plan
    plan.max_api_keys = 2
    plan.save()
    first, _ = api_key_create(tenant=world.acme, name="one")
    api_key_create(tenant=world.acme, name="two")
    with pytest.raises(TenancyError, match="2 active API keys"):
        api_key_create(tenant=world.acme, name="three")
    call_command("revoke_api_key", str(first.pk), stdout=StringIO())
    api_key_create(tenant=world.acme, name="three")  # a revoked key frees its place


def test_create_api_key_refuses_an_unknown_tenant(db):
    with pytest.raises(CommandError, match="no tenant 'nope'"):
        call_command("create_api_key", "nope")


# ---------------------------------------------------------------- through HTTP, in cloud mode


def test_a_key_writes_into_its_own_tenant(cloud, world, keys):
    response = post(cloud, keys["acme"], "nightly")
    assert response.status_code == 200, response.content
    with tenant_scope(world.acme):
        assert Run.objects.filter(tenant=world.acme, run_id="nightly").count() == 1
    with tenant_scope(world.globex):
        assert not Run.objects.filter(run_id="nightly").exists()


def test_the_same_run_id_in_two_tenants_is_two_runs(cloud, world, keys):
    assert post(cloud, keys["acme"], "nightly").status_code == 200
    both = start("nightly") + orjson.dumps({"ts": T, "event": "note"}) + b"\n"
    assert post(cloud, keys["globex"], "nightly", both).json()["next_seq"] == 2
    assert get(cloud, keys["acme"], "/api/v1/runs/nightly/events").json()["next_seq"] == 1
    assert len(get(cloud, keys["globex"], "/api/v1/runs/nightly/events").json()["results"]) == 2


def test_a_key_cannot_read_or_write_another_tenants_run(cloud, world_runs, keys):
    assert get(cloud, keys["acme"], "/api/v1/runs/acme_nightly/").status_code == 200
    for path in (
        "/api/v1/runs/acme_nightly/",
        "/api/v1/runs/acme_nightly/events",
        "/api/v1/runs/acme_nightly/graph",
    ):
        response = get(cloud, keys["globex"], path)
        assert (response.status_code, response.json()["error"]["code"]) == (404, "run_not_found"), path
    assert [r["run_id"] for r in get(cloud, keys["globex"], "/api/v1/runs/").json()["results"]] == [
        "globex_nightly"
    ]
    # A write with globex's key to the same run id makes globex's own run, and acme's is untouched.
    with tenant_scope(world_runs.acme):
        before = list(Event.objects.filter(run__run_id="acme_nightly").values_list("seq", "payload"))
    post(cloud, keys["globex"], "acme_nightly")
    with tenant_scope(world_runs.acme):
        assert list(Event.objects.filter(run__run_id="acme_nightly").values_list("seq", "payload")) == before


@pytest.mark.parametrize(
    "key",
    ["kahn_live_sk_nope_short", "kahn_live_sk_abcdefgh_" + "x" * 40, "Basic Zm9vOmJhcg==", ""],
    ids=["malformed", "unknown", "not-a-key", "empty"],
)
def test_a_bad_key_is_401_invalid_api_key(cloud, world, keys, key):
    response = post(cloud, key, "nightly")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response["WWW-Authenticate"].startswith("Bearer")
    with tenant_scope(world.acme):
        assert not Run.objects.filter(run_id="nightly").exists()


def test_no_credentials_at_all_is_401_with_a_bearer_challenge(cloud, world):
    response = post(cloud, None, "nightly")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_a_revoked_key_is_refused_on_its_next_request(cloud, world, keys):
    assert post(cloud, keys["acme"], "one").status_code == 200
    with tenant_scope(world.acme):
        key_id = ApiKey.objects.get(tenant=world.acme).pk
    out = StringIO()
    call_command("revoke_api_key", str(key_id), stdout=out)
    assert "revoked API key" in out.getvalue() and "acme" in out.getvalue()
    response = post(cloud, keys["acme"], "two")
    assert (response.status_code, response.json()["error"]["code"]) == (401, "invalid_api_key")


def test_an_expired_key_is_refused_and_an_overlapping_one_works(cloud, world):
    old, old_key = api_key_create(
        tenant=world.acme, name="old", expires_at=timezone.now() + timedelta(days=1)
    )
    _, new_key = api_key_create(tenant=world.acme, name="new")
    assert post(cloud, old_key, "a").status_code == 200
    with tenant_scope(world.acme):
        ApiKey.objects.filter(pk=old.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert post(cloud, old_key, "b").status_code == 401
    assert post(cloud, new_key, "b").status_code == 200


def test_revoke_api_key_refuses_an_unknown_id(db):
    with pytest.raises(CommandError, match="no API key 999"):
        call_command("revoke_api_key", "999")


def test_last_used_is_written_at_most_once_a_minute(world, keys):
    first = api_key_authenticate(keys["acme"])
    assert first is not None and first.last_used_at is not None
    second = api_key_authenticate(keys["acme"])
    assert second.last_used_at == first.last_used_at
    with tenant_scope(world.acme):
        ApiKey.objects.filter(pk=first.pk).update(last_used_at=timezone.now() - timedelta(minutes=2))
    third = api_key_authenticate(keys["acme"])
    assert third.last_used_at > first.last_used_at


def test_a_refused_request_still_records_the_keys_use(cloud, world, keys):
    # The request's own transaction rolls back with its error answer; the key's use is written after
    # it, so a producer whose every batch is refused still shows when its key was last seen.
    response = post(cloud, keys["acme"], "refused", body=b"not json\n")
    assert response.status_code == 400
    with tenant_scope(world.acme):
        used = ApiKey.objects.get(tenant=world.acme)
        assert used.last_used_at is not None
        assert not Run.objects.filter(run_id="refused").exists()


def test_oss_mode_ignores_authorization_headers(client, local_tenant):
    response = post(client, "kahn_live_sk_whatever_" + "x" * 40, "oss_run")
    assert response.status_code == 200


# ---------------------------------------------------------------- as the service role, under RLS


@pytest.mark.postgres
@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL (row-level security)")
def test_keys_are_found_and_events_stored_as_the_service_role(service_role, transactional_db, cloud):
    from tests.conftest import world_build

    world = world_build()  # made by the migrating role, committed
    acme_key = key_for(world.acme)
    events = b"".join(
        orjson.dumps(e) + b"\n"
        for e in (
            {"ts": T, "event": "run_start", "run_id": "rls", "graph": {"nodes": [{"id": "a"}]}},
            {"ts": T, "event": "transition", "node": "a", "from": "pending", "to": "running", "attempt": 1},
        )
    )
    with connected_as(service_role):
        # The key is found through its hash policy, and the events go in through the staging
        # table, as COPY cannot write under row-level security for this role.
        assert api_key_authenticate(acme_key).tenant.slug == "acme"
        response = post(cloud, acme_key, "rls", events)
        assert response.status_code == 200, response.content
        assert response.json()["next_seq"] == 2
        assert get(cloud, acme_key, "/api/v1/runs/rls/").json()["total_nodes"] == 1
    globex_key = key_for(world.globex)
    with connected_as(service_role):
        assert get(cloud, globex_key, "/api/v1/runs/rls/").status_code == 404


@pytest.mark.postgres
@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL (row-level security)")
def test_a_producers_key_binds_its_tenant_in_the_read_that_finds_it_and_a_dead_key_binds_none(
    service_role, transactional_db
):
    from django.db import transaction

    from tenants.context import TENANT_SETTING
    from tenants.services import api_key_find, api_key_revoke
    from tests.conftest import run_record, world_build

    world = world_build()
    run_record(world.acme, "acme_run")
    run_record(world.globex, "globex_run")
    live, dead, expired = key_for(world.acme, "live"), key_for(world.acme, "dead"), key_for(world.acme, "old")
    api_key_revoke(api_key=api_key_find(dead))
    ApiKey.objects.unscoped().filter(name="old").update(expires_at=timezone.now() - timedelta(seconds=1))

    def bound_after_finding(key: str) -> tuple[object, str | None, int]:
        with connected_as(service_role), transaction.atomic(), connection.cursor() as cursor:
            found = api_key_find(key, bind_tenant=True)
            cursor.execute("SELECT current_setting(%s, true)", [TENANT_SETTING])
            (bound,) = cursor.fetchone()
            # What row-level security lets this transaction see: the bound tenant's runs, or none.
            cursor.execute("SELECT count(*) FROM runs_run")
            (visible,) = cursor.fetchone()
        return found, bound, visible

    found, bound, visible = bound_after_finding(live)
    assert found.tenant == world.acme and bound == str(world.acme.pk)
    assert visible == Run.objects.unscoped().filter(tenant=world.acme).count() == 1
    for refused in (dead, expired):
        found, bound, visible = bound_after_finding(refused)
        assert found is None and bound == "" and visible == 0
