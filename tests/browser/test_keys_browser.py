"""The keys page in a real browser, served as cloud mode is deployed (`manage.py serve`, daphne, as
the service role under row-level security): an owner creates a key, copies it with the page's
button, finds it in the list, and revokes it; the copied key is tried on the ingest API.

Nothing here touches the database once the browser runs: Playwright's event loop gives the ORM a
connection of its own, which the test database's teardown would find still open.
"""

import re
from collections.abc import Iterator

import orjson
import pytest
import requests
from django.test import Client
from playwright.sync_api import expect

from tenants.services import API_KEY_PATTERN
from tests.browser.conftest import ARTIFACTS
from tests.conftest import scope_server
from tests.tenants.conftest import POSTGRES_ONLY, cloud_server_env
from tests.tenants.conftest import service_role as service_role  # the fixture, for this directory

pytestmark = [*POSTGRES_ONLY, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def cloud_url(service_role, world) -> Iterator[str]:
    with scope_server(cloud_server_env(service_role), "--host", "127.0.0.1") as url:
        yield url


@pytest.fixture
def alice_session(world) -> str:
    """The session cookie a sign-in of alice, owner of acme, would have set (the server shares the
    secret key and the database)."""
    signed_in = Client()
    # Signed in through cloud mode's one backend, as the server checks the session's backend.
    signed_in.force_login(world.alice, backend="tenants.oidc.TenantOIDCBackend")
    return signed_in.cookies["sessionid"].value


def send_run_start(server: str, key: str, run_id: str) -> int:
    event = {"ts": "2026-11-20T10:00:00.000Z", "event": "run_start", "run_id": run_id}
    response = requests.post(
        f"{server}/api/v1/runs/{run_id}/events",
        data=orjson.dumps(event),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/x-ndjson"},
        timeout=10,
    )
    return response.status_code


def test_an_owner_creates_a_key_copies_it_and_sees_it_listed(cloud_url, world, alice_session, browser_page):
    page = browser_page
    server = cloud_url
    page.context.add_cookies([{"name": "sessionid", "value": alice_session, "url": server}])
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server)

    page.goto(f"{server}/")
    page.get_by_role("link", name="API keys").click()
    expect(page.locator("h1")).to_have_text("API keys")
    expect(page.get_by_role("link", name="API keys")).to_have_attribute("aria-current", "page")
    expect(page.locator("table.keys tbody")).to_contain_text("No keys yet")

    page.get_by_label("Name").fill("nightly-ci")
    page.get_by_role("button", name="Create key").click()
    new_key = page.get_by_label("The new API key")
    expect(new_key).to_be_visible()
    key = new_key.input_value()
    assert API_KEY_PATTERN.match(key) and key.startswith(f"kahn_live_sk_{world.acme.key_prefix}_")

    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    expect(page.locator(".copy-status")).to_have_text("Copied to the clipboard.")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == key

    row = page.locator("table.keys tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("nightly-ci")
    expect(row).to_contain_text(f"…{key[-4:]}")
    expect(row.locator(".badge")).to_have_text("active")
    expect(row).to_contain_text("by alice@example.com")
    expect(page.locator(".section-head")).to_contain_text("1 of the 10 keys the Default plan allows is")
    page.screenshot(path=str(ARTIFACTS / "api-keys-created.png"), full_page=True)
    assert send_run_start(server, copied, "from_the_clipboard") == 200  # what was copied works

    # Revoke it: the page asks first, then the key stops working and the list says so.
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Revoke nightly-ci").click()
    expect(page.locator(".notice-success")).to_contain_text(f"Revoked nightly-ci (…{key[-4:]})")
    expect(page).to_have_url(re.compile(r"/keys/$"))
    expect(page.get_by_label("The new API key")).to_have_count(0)  # shown once, never again
    expect(row.locator(".badge")).to_have_text("revoked")
    expect(row.get_by_role("button")).to_have_count(0)
    page.screenshot(path=str(ARTIFACTS / "api-keys-revoked.png"), full_page=True)
    assert send_run_start(server, copied, "after_revoking") == 401
