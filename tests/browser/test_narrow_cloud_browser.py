"""Cloud mode's pages on a 360 px wide phone, light and dark, served as deployed (`manage.py serve`,
as the service role): the header with its workspace switcher and sign-out wraps, and no page is wider
than the screen. Screenshots in test-artifacts/narrow-cloud-*.png."""

from collections.abc import Iterator

import pytest
from django.test import Client

from tests.browser.test_narrow_browser import PHONE, assert_fits
from tests.conftest import scope_server
from tests.tenants.conftest import POSTGRES_ONLY, cloud_server_env
from tests.tenants.conftest import service_role as service_role  # the fixture, for this directory

pytestmark = [*POSTGRES_ONLY, pytest.mark.django_db(transaction=True)]

# alice owns acme: its runs, keys and members. carol is a member of acme and an admin of globex:
# her header has the workspace switcher, and acme's keys page tells her who may manage keys.
ALICE_PAGES = {
    "history": "/",
    "run": "/runs/acme_nightly/",
    "nodes": "/nodes/",
    "node": "/nodes/build/",
    "keys": "/keys/",
    "members": "/members/",
    "workspaces": "/workspaces/",
    "retention": "/retention/",
}
CAROL_PAGES = {"history-switcher": "/", "keys-managers-only": "/keys/"}


@pytest.fixture
def cloud_url(service_role, world_runs) -> Iterator[str]:
    with scope_server(cloud_server_env(service_role), "--host", "127.0.0.1") as url:
        yield url


@pytest.fixture
def sessions(world_runs) -> dict[str, str]:
    """The session cookies sign-ins of alice and carol would have set (the server shares the secret
    key). Made before the browser starts: Playwright's event loop would give the ORM a connection
    of its own, which the test database's teardown would find still open."""
    cookies = {}
    for name in ("alice", "carol"):
        signed_in = Client()
        signed_in.force_login(getattr(world_runs, name), backend="tenants.oidc.TenantOIDCBackend")
        cookies[name] = signed_in.cookies["sessionid"].value
    return cookies


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_no_cloud_page_is_wider_than_a_phone(cloud_url, sessions, browser_page, scheme):
    page = browser_page
    page.emulate_media(color_scheme=scheme)
    page.set_viewport_size(PHONE)
    assert_fits(page, f"{cloud_url}/signed-out/", f"narrow-cloud-{scheme}-signed-out")
    for user, pages in (("alice", ALICE_PAGES), ("carol", CAROL_PAGES)):
        page.context.clear_cookies()
        page.context.add_cookies([{"name": "sessionid", "value": sessions[user], "url": cloud_url}])
        for name, path in pages.items():
            assert_fits(page, f"{cloud_url}{path}", f"narrow-cloud-{scheme}-{name}")
    # The pages above answered as themselves, not as a sign-in redirect.
    assert page.locator(".workspace-switcher select").count() == 1
