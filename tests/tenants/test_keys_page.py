"""The API keys page (cloud): owners and admins make a key (shown once), list and revoke keys;
members are refused, and nothing reaches another workspace's keys. Through the test client."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html import unescape

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from runs.templatetags.scope import time_label
from tenants.context import tenant_scope
from tenants.models import ApiKey
from tenants.services import API_KEY_PATTERN, api_key_authenticate, api_key_create
from tests.tenants.conftest import connected_as, database_dump

KEYS = "/keys/"


def shown_key(response) -> str:
    """The key the page shows once, read from its input as a browser would."""
    match = re.search(r'<input id="new-key" type="text" value="([^"]+)"', response.text)
    assert match, "no new key on the page"
    return unescape(match.group(1))


def create(client: Client, name: str, **fields: str):
    return client.post(KEYS, {"name": name, **fields})


def keys_of(tenant) -> list[ApiKey]:
    with tenant_scope(tenant):
        return list(ApiKey.objects.filter(tenant=tenant))


def revoke_url(api_key: ApiKey) -> str:
    return f"/keys/{api_key.pk}/revoke/"


COLUMNS = ("name", "key", "scopes", "state", "created", "last used", "expires", "revoke")


def listed(page: str, api_key: ApiKey) -> dict[str, str]:
    """The key's row of the list, as the text of each column."""
    match = re.search(rf'<tr class="key-\w+" data-key-id="{api_key.pk}">(.*?)</tr>', page, re.S)
    assert match, f"{api_key.name} is not listed"
    cells = re.findall(r"<td[^>]*>(.*?)</td>", match.group(1), re.S)
    texts = [" ".join(unescape(re.sub(r"<[^>]+>", " ", cell)).split()) for cell in cells]
    return dict(zip(COLUMNS, texts, strict=True))


# ---------------------------------------------------------------- who sees the page


def test_the_header_links_the_page_for_owners_and_admins_only(cloud, world):
    cloud.force_login(world.alice)  # owner of acme
    assert 'href="/keys/"' in cloud.get("/").text
    cloud.force_login(world.carol)  # member of acme (her first workspace), admin of globex
    assert 'href="/keys/"' not in cloud.get("/").text
    assert 'href="/keys/"' in cloud.get("/", headers={"X-Organization": "globex"}).text


def test_a_member_is_refused_the_page_and_its_writes(cloud, world):
    acme_key, _ = api_key_create(tenant=world.acme, name="acme-producer")
    cloud.force_login(world.carol)  # a member of acme, the workspace she is in
    page = cloud.get(KEYS)
    assert page.status_code == 403
    assert "Owners and admins only" in page.text and "acme-producer" not in page.text
    assert create(cloud, "mine").status_code == 403
    assert cloud.post(revoke_url(acme_key)).status_code == 403
    assert [(k.name, k.revoked_at) for k in keys_of(world.acme)] == [("acme-producer", None)]


def test_an_admin_manages_the_keys_of_the_workspace_they_administer(cloud, world):
    cloud.force_login(world.carol)
    response = cloud.post(KEYS, {"name": "deploys"}, headers={"X-Organization": "globex"})
    assert response.status_code == 200
    assert api_key_authenticate(shown_key(response)).tenant == world.globex
    assert keys_of(world.acme) == []


def test_signed_out_visitors_are_sent_to_sign_in_and_api_keys_get_no_page(cloud, world):
    response = cloud.get(KEYS)
    assert response.status_code == 302 and "/oidc/authenticate/" in response["Location"]
    _, key = api_key_create(tenant=world.acme, name="ci")
    # A producer's key acts for the workspace but is no one's membership: it cannot make keys.
    assert cloud.get(KEYS, HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 302
    assert cloud.post(KEYS, {"name": "more"}, HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 302
    assert [k.name for k in keys_of(world.acme)] == ["ci"]


def test_oss_mode_has_no_keys_page(client, local_tenant):
    assert client.get(KEYS).status_code == 404


# ---------------------------------------------------------------- make, list, revoke


def test_a_new_key_is_shown_once_and_works(cloud, world):
    cloud.force_login(world.alice)
    response = create(cloud, "nightly-ci")
    assert response.status_code == 200
    key = shown_key(response)
    assert API_KEY_PATTERN.match(key) and key.startswith(f"kahn_live_sk_{world.acme.key_prefix}_")
    assert "only time it is shown" in response.text
    assert "no-store" in response["Cache-Control"]  # no cache keeps the page that carries the key
    stored = api_key_authenticate(key)
    assert (stored.tenant, stored.name, stored.created_by) == (world.acme, "nightly-ci", world.alice)

    page = cloud.get(KEYS).text
    assert key not in page and 'id="new-key"' not in page
    row = listed(page, stored)
    assert (row["name"], row["key"], row["state"]) == ("nightly-ci", f"…{key[-4:]}", "active")
    assert row["created"].endswith("by alice@example.com")
    assert row["expires"] == "never"


def test_the_list_shows_each_keys_state_last_use_and_expiry(cloud, world):
    now = timezone.now()
    used, used_key = api_key_create(tenant=world.acme, name="used")
    last_used = api_key_authenticate(used_key).last_used_at  # its first use writes it
    idle, _ = api_key_create(tenant=world.acme, name="idle")
    expiring, _ = api_key_create(tenant=world.acme, name="rotating", expires_at=now + timedelta(days=3))
    expired, _ = api_key_create(tenant=world.acme, name="old", expires_at=now - timedelta(days=1))
    revoked, _ = api_key_create(tenant=world.acme, name="leaked")
    cloud.force_login(world.alice)
    cloud.post(revoke_url(revoked))
    page = cloud.get(KEYS).text

    # As every page writes a time (tests/runs/test_page_times.py pins the words).
    assert listed(page, used)["last used"] == time_label(last_used, UTC, "minute")
    assert listed(page, idle)["last used"] == "never"
    assert listed(page, expiring)["expires"] == time_label(now + timedelta(days=3), UTC, "minute")
    assert [listed(page, k)["state"] for k in (used, expiring, expired)] == ["active", "active", "expired"]
    assert listed(page, expired)["revoke"] == "Revoke old"  # an expired key still takes a place
    assert listed(page, revoked)["state"].startswith("revoked ")  # and when
    assert listed(page, revoked)["revoke"] == ""
    assert "4 of the 10 keys the Default plan allows are in use" in page  # revoked keys do not count


def test_an_expiry_date_is_kept_and_a_past_one_refused(cloud, world):
    cloud.force_login(world.alice)
    day = (timezone.now() + timedelta(days=30)).date()
    key = shown_key(create(cloud, "rotation", expires_on=day.isoformat()))
    assert api_key_authenticate(key).expires_at == datetime(day.year, day.month, day.day, tzinfo=UTC)
    response = create(cloud, "too-late", expires_on=timezone.now().date().isoformat())
    assert "Choose a day after today" in response.text and 'id="new-key"' not in response.text
    assert [k.name for k in keys_of(world.acme)] == ["rotation"]


def test_a_key_needs_a_name(cloud, world):
    cloud.force_login(world.alice)
    response = create(cloud, "   ")
    assert "Name: This field is required." in response.text
    assert keys_of(world.acme) == []


def test_revoking_needs_the_csrf_token_and_then_refuses_the_key_at_once(cloud, world):
    api_key, key = api_key_create(tenant=world.acme, name="ci")
    assert api_key_authenticate(key) is not None
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(world.alice)
    assert browser.post(revoke_url(api_key)).status_code == 403  # no token: Django's CSRF refusal
    assert api_key_authenticate(key) is not None

    page = browser.get(KEYS).text
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    response = browser.post(revoke_url(api_key), {"csrfmiddlewaretoken": token})
    assert (response.status_code, response["Location"]) == (302, KEYS)
    assert api_key_authenticate(key) is None
    assert f"Revoked ci (…{api_key.last4})" in browser.get(KEYS).text


def test_another_workspaces_key_cannot_be_revoked_through_the_page(cloud, world):
    acme_key, key = api_key_create(tenant=world.acme, name="acme-ci")
    cloud.force_login(world.bob)  # owner of globex only
    response = cloud.post(revoke_url(acme_key))
    assert response.status_code == 404
    # Nor by carol, admin of globex, acting in globex: the page reaches its own workspace's keys only.
    cloud.force_login(world.carol)
    assert cloud.post(revoke_url(acme_key), headers={"X-Organization": "globex"}).status_code == 404
    assert api_key_authenticate(key) is not None
    assert keys_of(world.acme)[0].revoked_at is None
    # Nor is it listed on globex's page.
    assert "acme-ci" not in cloud.get(KEYS, headers={"X-Organization": "globex"}).text


def test_the_plans_limit_is_a_clear_message_not_an_error(cloud, world):
    plan = world.acme.plan
    plan.max_api_keys = 2
    plan.save()
    cloud.force_login(world.alice)
    assert create(cloud, "one").status_code == 200
    assert create(cloud, "two").status_code == 200

    page = cloud.get(KEYS).text
    assert "This workspace has all 2 keys its plan allows. Revoke one to create another." in page
    assert "<fieldset disabled>" in page

    # Sent anyway (a stale tab): refused by the service, with its sentence, and nothing stored.
    refused = create(cloud, "three")
    assert refused.status_code == 200 and 'id="new-key"' not in refused.text
    assert "Not created: acme has 2 active API keys, the most its plan &#x27;Default&#x27; allows" in (
        refused.text
    )
    assert sorted(k.name for k in keys_of(world.acme)) == ["one", "two"]

    one = next(k for k in keys_of(world.acme) if k.name == "one")
    cloud.post(revoke_url(one))
    assert "<fieldset disabled>" not in cloud.get(KEYS).text
    assert create(cloud, "three").status_code == 200


def test_the_list_costs_the_same_queries_for_one_key_or_many(cloud, world):
    cloud.force_login(world.alice)
    api_key_create(tenant=world.acme, name="first", created_by=world.alice)
    with CaptureQueriesContext(connection) as one:
        assert cloud.get(KEYS).status_code == 200
    for number in range(5):
        api_key_create(tenant=world.acme, name=f"more-{number}", created_by=world.carol)
    with CaptureQueriesContext(connection) as six:
        assert cloud.get(KEYS).status_code == 200
    assert len(six) == len(one)


@pytest.mark.django_db(transaction=True)
def test_the_shown_key_is_stored_nowhere(cloud):
    from tests.conftest import world_build

    world = world_build()
    cloud.force_login(world.alice)
    key = shown_key(create(cloud, "dumped"))
    cloud.get(KEYS)
    # Not in the tables, and not in the session either (the page is the POST's answer, not a redirect).
    assert key.rsplit("_", 1)[1] not in database_dump()


@pytest.mark.postgres
@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL (row-level security)")
def test_the_page_works_as_the_service_role_under_row_level_security(service_role, transactional_db, cloud):
    from tests.conftest import world_build

    world = world_build()  # made by the migrating role, committed
    globex_key, _ = api_key_create(tenant=world.globex, name="globex-producer")
    with connected_as(service_role):
        cloud.force_login(world.alice)
        key = shown_key(create(cloud, "acme-producer"))
        made = api_key_authenticate(key)
        assert made.tenant == world.acme
        page = cloud.get(KEYS).text
        assert "acme-producer" in page and "globex-producer" not in page
        assert cloud.post(revoke_url(globex_key)).status_code == 404
        assert cloud.post(revoke_url(made)).status_code == 302
        assert api_key_authenticate(key) is None
    assert keys_of(world.globex)[0].revoked_at is None
