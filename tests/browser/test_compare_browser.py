"""Two runs compared, in Chromium: reached from a run page's link to the previous run of its graph,
under the Content Security Policy, with no console error."""

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import ARTIFACTS
from tests.browser.test_csp_browser import WATCH_VIOLATIONS, violations
from tests.conftest import manage_env, scope_server

# The pages a browser draws are the same HTML on either database (tests/runs checks the HTML on both).
pytestmark = pytest.mark.database_agnostic


@pytest.fixture
def server_url(transactional_db, imported):
    with scope_server(manage_env(), "--no-follow") as url:
        yield url


def test_run_flaky_compared_with_the_previous_run_of_its_graph(server_url, browser_page):
    page = browser_page
    page.add_init_script(WATCH_VIOLATIONS)
    page.goto(f"{server_url}/runs/run_flaky/")
    link = page.locator("#compare-previous")
    expect(link).to_contain_text("run_clean")
    page.locator("#run-head").screenshot(path=str(ARTIFACTS / "run-head-compare-link.png"))
    link.click()
    page.wait_for_url(f"{server_url}/runs/run_clean/compare/run_flaky/")

    expect(page.locator("h1")).to_contain_text("run_flaky compared with a run_clean")
    rows = page.locator("#compare-nodes tbody tr")
    assert rows.count() == 7
    # The nodes run_flaky retried come first, with their attempts in each run.
    first = rows.first
    assert first.get_attribute("data-node") == "auth-table"
    assert [cell.inner_text() for cell in first.locator("td").all()[:7]] == [
        "auth-table", "changed", "done", "done", "1", "2", "+1",
    ]  # fmt: skip
    expect(page.locator("#compare-counts")).to_contain_text("3 of 7 differ")
    divergence = page.locator("#compare-divergence")
    expect(divergence.locator("#divergence-summary")).to_contain_text("node auth-table")
    expect(divergence.locator('tr[data-side="b"] .event-step')).to_have_text(
        "node_attempt auth-table attempt 1 failed"
    )
    assert violations(page) == []
    page.screenshot(path=str(ARTIFACTS / "compare-run_flaky-run_clean.png"), full_page=True)

    # At 360 px each card keeps within the page: its wide tables scroll inside it.
    page.set_viewport_size({"width": 360, "height": 800})
    for card in ("#compare-totals", "#compare-divergence", "#compare-nodes"):
        box = page.locator(card).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 360, (card, box)
    page.screenshot(path=str(ARTIFACTS / "compare-run_flaky-run_clean-360.png"), full_page=True)
    page.set_viewport_size({"width": 1360, "height": 900})

    # Only the differences, then the diverging event in run_flaky's own log.
    page.get_by_role("link", name="Only differences").click()
    expect(rows).to_have_count(3)
    divergence.locator('tr[data-side="b"] a.event-link').click()
    page.wait_for_url(f"{server_url}/runs/run_flaky/?at=9&log_from=0#event-9")
    event = page.locator("tr#event-9")
    expect(event).to_have_class(re.compile(r"\bcurrent\b"))
    expect(event).to_contain_text("auth-table")
    assert violations(page) == []
