"""The header's local-time toggle in a browser whose zone is Europe/Paris: pressed, it keeps that
zone in a cookie and every time on the pages follows; pressed again, times are UTC once more."""

import pytest

from runs.templatetags.scope import TIME_ZONE_COOKIE
from tests.browser.conftest import ARTIFACTS
from tests.conftest import manage_env, scope_server

pytestmark = pytest.mark.database_agnostic


@pytest.fixture
def server_url(transactional_db, imported):
    with scope_server(manage_env(), "--no-follow") as url:
        yield url


def first_started(page) -> str:
    return page.locator("table.runs tbody time").first.inner_text()


def zone_cookie(page) -> str | None:
    return next((c["value"] for c in page.context.cookies() if c["name"] == TIME_ZONE_COOKIE), None)


def test_the_toggle_shows_times_in_the_browsers_zone_and_back(server_url, browser_page):
    page = browser_page
    page.context.new_cdp_session(page).send("Emulation.setTimezoneOverride", {"timezoneId": "Europe/Paris"})
    page.goto(f"{server_url}/")
    toggle = page.locator("#time-toggle")
    assert toggle.is_visible() and toggle.get_attribute("aria-pressed") == "false"
    assert first_started(page) == "Nov 20, 15:00:00 UTC"  # run_inline, the newest run that started

    with page.expect_navigation():
        toggle.click()
    assert zone_cookie(page) == "Europe/Paris"
    assert page.locator("#time-toggle").get_attribute("aria-pressed") == "true"
    assert first_started(page) == "Nov 20, 16:00:00 CET"
    page.screenshot(path=str(ARTIFACTS / "time-zone-local.png"))
    # The cookie holds for every page: the run's log is in the same zone, and says so.
    page.goto(f"{server_url}/runs/run_dirty/")
    assert page.locator("table.log thead").inner_text().count("Time (Europe/Paris)") == 1
    assert page.locator(".facts time").first.inner_text() == "Nov 20, 15:00:00 CET"

    with page.expect_navigation():
        page.locator("#time-toggle").click()
    assert zone_cookie(page) is None
    assert page.locator(".facts time").first.inner_text() == "Nov 20, 14:00:00 UTC"
    assert page.locator("#time-toggle").get_attribute("aria-pressed") == "false"
