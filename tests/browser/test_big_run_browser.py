"""A 2,000-node run in a real browser: what failed is on the first screen, and `/` finds a node.

Served by `manage.py serve` (daphne), as the other page tests are. The run is built once, by the
project's simulator and `ingest_archive`.
"""

import re

import pytest
from playwright.sync_api import expect

from ingest.simulator import run_write
from tests.big_runs import BIG_RUN_FAILURES, big_run
from tests.browser.conftest import ARTIFACTS
from tests.conftest import ingest_quietly, manage_env, scope_server

# The pages a browser draws are the same HTML on either database (tests/runs checks the HTML on both).
pytestmark = pytest.mark.database_agnostic

RUN_ID = "run_big"


@pytest.fixture
def server_url(transactional_db, local_tenant, tmp_path):
    run = big_run(RUN_ID)
    run_write(tmp_path, run)
    ingest_quietly(tmp_path)
    with scope_server(manage_env(), "--no-follow") as url:
        yield url, run.summary["failed_nodes"]


def test_the_failed_nodes_of_a_2000_node_run_are_on_the_first_screen(server_url, browser_page):
    url, failed_nodes = server_url
    assert len(failed_nodes) == BIG_RUN_FAILURES
    page = browser_page
    page.goto(f"{url}/runs/{RUN_ID}/")
    expect(page.locator("h1")).to_contain_text(RUN_ID)
    viewport = page.viewport_size
    assert viewport == {"width": 1360, "height": 900}
    assert page.evaluate("window.scrollY") == 0

    # Every failed node is drawn in the focused subgraph, inside the first viewport, unscrolled.
    focus = page.locator("#dag-focus-svg")
    for node_id in failed_nodes:
        box = focus.locator(f'g.node[data-node="{node_id}"]')
        expect(box).to_have_class(re.compile(r"\bs-failed\b"))
        rect = box.bounding_box()
        assert rect is not None, node_id
        assert rect["x"] >= 0 and rect["x"] + rect["width"] <= viewport["width"], (node_id, rect)
        assert rect["y"] >= 0 and rect["y"] + rect["height"] <= viewport["height"], (node_id, rect)
    expect(page.locator(".failed-names .chip")).to_have_count(BIG_RUN_FAILURES)
    # The whole graph waits to be asked for; the timeline starts with the failures.
    expect(page.locator("#dag-collapsed")).to_contain_text("2000 nodes")
    expect(page.locator(".gantt .g-label").first).to_have_class(re.compile(r"\bs-failed\b"))
    page.screenshot(path=str(ARTIFACTS / "run_big-first-screen.png"))

    # `/` focuses the search; a node far from the failures is found, drawn, marked and in sight.
    wanted = "n1500"
    page.keyboard.press("/")
    expect(page.locator("#dag-find")).to_be_focused()
    page.keyboard.type(wanted)
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(rf"find={wanted}"))
    found = page.locator(f'#dag-full-svg g.node[data-node="{wanted}"]')
    expect(found).to_have_class(re.compile(r"\bfound\b"))
    expect(found).to_be_in_viewport()
    expect(page.locator("#dag-find-status")).to_contain_text(f"1 node matches “{wanted}”")

    # Searching again among the drawn nodes goes to the next match without a reload.
    page.keyboard.press("Escape")
    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("/")
    page.keyboard.press("Control+a")
    page.keyboard.type("n092")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(rf"find={wanted}"))
    expect(page.locator('#dag-full-svg g.node[data-node="n092"]')).to_be_in_viewport()
    page.screenshot(path=str(ARTIFACTS / "run_big-found.png"))

    # Zoom: fit to width shrinks the whole graph to its box, actual size restores it.
    svg = page.locator("#dag-full-svg")
    natural = int(svg.get_attribute("data-width"))
    page.locator("#dag-full [data-zoom=fit]").click()
    assert int(svg.get_attribute("width")) < natural
    page.locator("#dag-full [data-zoom=actual]").click()
    assert int(svg.get_attribute("width")) == natural

    # Dragging pans the whole graph inside its box.
    view = page.locator("#dag-full .dag-view")
    before = view.evaluate("box => box.scrollLeft")
    box = view.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + 40)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 - 200, box["y"] + 40, steps=5)
    page.mouse.up()
    assert view.evaluate("box => box.scrollLeft") == before + 200

    # A click after the pan still opens the node clicked, in this run.
    page.locator('#dag-full-svg g.node[data-node="n092"]').click()
    expect(page).to_have_url(f"{url}/runs/run_big/nodes/n092/")
