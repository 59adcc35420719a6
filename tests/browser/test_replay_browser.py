"""The issue's walk through, in a real browser: from the history to run_failed and back in time.

Served by `manage.py serve` (daphne): the pages open a WebSocket (/ws/live), which Django's own
test server cannot answer.
"""

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import ARTIFACTS
from tests.conftest import manage_env, scope_server

# The pages a browser draws are the same HTML on either database (tests/runs checks the HTML on both).
pytestmark = pytest.mark.database_agnostic


def node(page, node_id: str):
    return page.locator(f'.dag g.node[data-node="{node_id}"]')


@pytest.fixture
def server_url(transactional_db, imported):
    with scope_server(manage_env(), "--no-follow") as url:
        yield url


def test_find_the_failed_run_see_what_broke_it_and_replay_it(server_url, browser_page):
    page = browser_page
    page.goto(f"{server_url}/")
    expect(page.locator("table.runs tbody tr")).to_have_count(8)

    # Filter the history to failed runs, as a user would: choose, then apply.
    page.get_by_role("combobox", name="Show").select_option("failed")
    page.get_by_role("button", name="Apply").click()
    expect(page).to_have_url(re.compile(r"status=failed"))
    rows = page.locator("table.runs tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("run_failed")
    expect(rows.first.locator(".badge")).to_have_text("failed")
    expect(rows.first).to_contain_text("api-routes")
    expect(page.locator(".chart rect.bar")).to_have_count(1)
    page.screenshot(path=str(ARTIFACTS / "history-failed.png"), full_page=True)

    page.get_by_role("link", name="run_failed", exact=True).click()
    expect(page).to_have_url(f"{server_url}/runs/run_failed/")
    expect(page.locator("h1")).to_contain_text("run_failed")
    expect(page.locator("#gantt-cursor")).to_have_class(re.compile(r"\bis-hidden\b"))

    # api-routes failed after 3 attempts; the two blocked nodes point at it.
    api_routes = node(page, "api-routes")
    expect(api_routes).to_have_class(re.compile(r"\bs-failed\b"))
    expect(api_routes.locator(".state")).to_have_text("failed · 3 attempts")
    expect(api_routes.locator(".retry text")).to_have_text("\u00d73")
    for blocked in ("integration-tests", "deploy-preview"):
        expect(node(page, blocked)).to_have_class(re.compile(r"\bs-blocked\b"))
    blocking = page.locator(".dag path.edge.blocking")
    expect(blocking).to_have_count(2)
    assert {(e.get_attribute("data-from"), e.get_attribute("data-to")) for e in blocking.all()} == {
        ("api-routes", "integration-tests"),
        ("integration-tests", "deploy-preview"),
    }
    expect(page.locator(".gantt rect.attempt.o-failed[data-start-seq]")).to_have_count(3)
    page.screenshot(path=str(ARTIFACTS / "run_failed.png"), full_page=True)

    # Move the scrubber back to event 5: the DAG and the timeline show the run as it stood then.
    page.locator("#at").fill("5")
    expect(page.locator("#at-label")).to_contain_text("After event 5 of 24")
    expect(page.locator("#at-label")).to_contain_text("auth-table pending → running")
    expect(node(page, "schema-init")).to_have_class(re.compile(r"\bs-done\b"))
    expect(node(page, "auth-table")).to_have_class(re.compile(r"\bs-running\b"))
    expect(node(page, "lint")).to_have_class(re.compile(r"\bs-running\b"))
    for later in ("users-table", "api-routes", "integration-tests", "deploy-preview"):
        expect(node(page, later)).to_have_class(re.compile(r"\bs-pending\b"))
    expect(api_routes.locator(".state")).to_have_text("pending · not run")
    expect(api_routes.locator(".retry")).to_be_hidden()
    expect(page.locator(".dag path.edge.blocking")).to_have_count(0)
    expect(page.locator(".gantt rect.attempt:not(.is-hidden)")).to_have_count(3)
    # A vertical line has no area, so "visible" cannot be asked of it: it is drawn unless hidden.
    expect(page.locator("#gantt-cursor")).not_to_have_class(re.compile(r"\bis-hidden\b"))
    expect(page.locator("#event-6")).to_have_class(re.compile(r"\bfuture\b"))
    expect(page).to_have_url(re.compile(r"\?at=5$"))
    page.screenshot(path=str(ARTIFACTS / "run_failed-at-event-5.png"), full_page=True)

    # One step back with the button, then reload: the server draws the same moment.
    page.get_by_role("button", name="One event back").click()
    expect(node(page, "auth-table")).to_have_class(re.compile(r"\bs-pending\b"))
    page.reload()
    expect(page.locator("#at-label")).to_contain_text("After event 4 of 24")
    expect(node(page, "auth-table")).to_have_class(re.compile(r"\bs-pending\b"))
    expect(node(page, "schema-init")).to_have_class(re.compile(r"\bs-done\b"))

    # And forward to the end again: the final picture is back.
    page.locator("#at").fill("24")
    expect(api_routes).to_have_class(re.compile(r"\bs-failed\b"))
    expect(page.locator(".dag path.edge.blocking")).to_have_count(2)
    expect(page.locator("#gantt-cursor")).to_have_class(re.compile(r"\bis-hidden\b"))
    expect(page).to_have_url(f"{server_url}/runs/run_failed/")
