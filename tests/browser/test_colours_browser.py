"""Colours as the browser draws them: red means a failure, and only a failure."""

import pytest

from tests.browser.conftest import ARTIFACTS
from tests.conftest import manage_env, scope_server

# The pages a browser draws are the same HTML on either database (tests/runs checks the HTML on both).
pytestmark = pytest.mark.database_agnostic

FAILED = "rgb(207, 34, 46)"  # --failed in static/scope.css
LINK = "rgb(9, 105, 218)"  # --accent


@pytest.fixture
def server_url(transactional_db, imported):
    with scope_server(manage_env(), "--no-follow") as url:
        yield url


def colour(locator, prop: str = "color") -> str:
    return locator.evaluate(f"(el) => getComputedStyle(el).{prop}")


def test_node_names_are_links_not_failures(server_url, browser_page):
    page = browser_page
    page.goto(f"{server_url}/nodes/")
    links = page.locator("a.node-link")
    assert links.count() >= 5
    assert {colour(link) for link in links.all()} == {LINK}
    # The history's "Failed nodes" column still names its nodes in the failure colour.
    page.goto(f"{server_url}/?status=failed")
    assert colour(page.locator("td.failed-nodes a.node-link").first) == FAILED


def test_zero_failed_is_not_red_and_some_failed_is(server_url, browser_page):
    page = browser_page
    page.goto(f"{server_url}/runs/run_clean/")
    zero = page.locator(".node-summary .count", has_text="failed")
    assert zero.inner_text() == "0 failed"
    assert colour(zero) != FAILED
    page.goto(f"{server_url}/runs/run_failed/")
    some = page.locator(".node-summary .count", has_text="failed")
    assert some.inner_text() == "1 failed"
    assert colour(some) == FAILED


def test_a_zero_length_failed_attempt_is_drawn_red(server_url, browser_page):
    page = browser_page
    page.goto(f"{server_url}/runs/run_same_ts/")
    bars = page.locator('.gantt rect.attempt[data-outcome="failed"]')
    assert bars.count() >= 2
    for bar in bars.all():
        assert colour(bar, "fill") == FAILED
        assert bar.bounding_box()["width"] >= 6
    page.locator("#run-timeline").screenshot(path=str(ARTIFACTS / "timeline-same-ts.png"))
