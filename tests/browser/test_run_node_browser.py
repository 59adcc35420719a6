"""A node in one run, in a real browser: from the failed node in run_failed's DAG to its page."""

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import ARTIFACTS
from tests.conftest import manage_env, scope_server

# The pages a browser draws are the same HTML on either database (tests/runs checks the HTML on both).
pytestmark = pytest.mark.database_agnostic


@pytest.fixture
def server_url(transactional_db, imported):
    with scope_server(manage_env(), "--no-follow") as url:
        yield url


def test_clicking_a_failed_node_in_the_dag_opens_it_in_this_run(server_url, browser_page):
    page = browser_page
    page.goto(f"{server_url}/runs/run_failed/")
    page.locator('.dag g.node.s-failed[data-node="api-routes"]').click()

    expect(page).to_have_url(f"{server_url}/runs/run_failed/nodes/api-routes/")
    expect(page.get_by_role("heading", level=1)).to_have_text(re.compile(r"api-routes\s+failed"))
    attempts = page.locator("table.attempts tbody tr")
    expect(attempts).to_have_count(3)
    for row in attempts.all():
        expect(row.locator(".badge")).to_have_text("failed")
        expect(row).to_contain_text("api-routes: exit status 1")
    expect(page.locator("#dependents")).to_contain_text("integration-tests")
    page.screenshot(path=str(ARTIFACTS / "run-node-api-routes.png"), full_page=True)

    # Back to the run through the log: an attempt's start jumps to its event.
    page.locator("table.attempts tbody tr").first.get_by_role("link").first.click()
    expect(page).to_have_url(re.compile(r"/runs/run_failed/\?log_from=0#event-11$"))
    expect(page.locator("#event-11")).to_be_in_viewport()
