"""Live pages in a real browser: `manage.py serve` follows an archive a producer is writing, and the
history and the run page change as lines land, without a reload; when the server goes away the page
says so, and when it is back the page catches up from where it was. Screenshots along the way."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.sync_api import expect

from ingest.simulator import WEB_APP, event_line, run_simulate
from tests.browser.conftest import ARTIFACTS
from tests.conftest import manage_env, scope_server
from tests.servers import free_port

# How long the page may take to show what was appended: a bound against hanging, not a measure.
PATIENCE_MS = 20_000


def a_whole_run(run_id: str) -> tuple[dict, list[str]]:
    """The graph and log lines of a run of the sample's DAG in which two nodes are retried once,
    starting now (an older last event would show the run as interrupted, not running)."""
    plan = {"auth-table": [False, True], "lint": [False, True]}
    run = run_simulate(run_id, WEB_APP, plan, start=datetime.now(UTC))
    return run.graph, [event_line(event) for event in run.events]


def append(folder: Path, lines: list[str], *, per_write: int = 4) -> None:
    """Appends lines a few at a time, as a producer writes them."""
    for start in range(0, len(lines), per_write):
        with open(folder / "transitions.jsonl", "a") as log:
            log.writelines(lines[start : start + per_write])
        time.sleep(0.05)


def node(page, node_id: str):
    return page.locator(f'.dag g.node[data-node="{node_id}"]')


@pytest.mark.usefixtures("transactional_db", "local_tenant")
def test_history_and_run_page_follow_a_run_as_it_is_written(browser_page, tmp_path):
    page = browser_page
    archive = tmp_path / "archive"
    (archive / "runs").mkdir(parents=True)
    graph, lines = a_whole_run("run_live")
    folder = archive / "runs" / "run_live"
    first = next(i for i, line in enumerate(lines) if '"node_attempt"' in line)  # two nodes running
    middle = next(i for i, line in enumerate(lines) if '"api-routes"' in line)
    env, port = manage_env(KAHN_ARCHIVE=str(archive)), free_port()

    with scope_server(env, "--follow-interval", "0.1", port=port) as url:
        page.goto(f"{url}/")
        expect(page.locator("#live-status")).to_have_text("Live", timeout=PATIENCE_MS)
        expect(page.locator("table.runs tbody")).to_contain_text("No runs yet")
        # A reload would lose this: it proves the page changed in place.
        page.evaluate("window.stillTheSamePage = true")

        # The producer starts: graph.json, then the first lines.
        folder.mkdir()
        (folder / "graph.json").write_text(json.dumps(graph))
        append(folder, lines[:first])
        row = page.locator("table.runs tbody tr", has_text="run_live")
        expect(row.locator(".badge")).to_have_text("running", timeout=PATIENCE_MS)
        assert page.evaluate("window.stillTheSamePage") is True
        page.screenshot(path=str(ARTIFACTS / "live-history-running.png"), full_page=True)

        row.get_by_role("link", name="run_live").click()
        expect(page).to_have_url(f"{url}/runs/run_live/")
        expect(page.locator("#live-status")).to_have_text("Live", timeout=PATIENCE_MS)
        expect(node(page, "schema-init")).to_have_class(re.compile(r"\bs-running\b"))
        expect(node(page, "deploy-preview")).to_have_class(re.compile(r"\bs-pending\b"))
        expect(page.locator("#fact-events")).to_have_text(str(first))
        page.evaluate("window.stillTheSamePage = true")
        page.screenshot(path=str(ARTIFACTS / "live-run-before.png"), full_page=True)

        append(folder, lines[first:middle])
        expect(node(page, "schema-init")).to_have_class(re.compile(r"\bs-done\b"), timeout=PATIENCE_MS)
        expect(page.locator("#fact-events")).to_have_text(str(middle), timeout=PATIENCE_MS)

    # The server is gone: the page says so, and keeps what it has.
    expect(page.locator("#live-status")).to_have_text("Reconnecting…", timeout=PATIENCE_MS)
    page.screenshot(path=str(ARTIFACTS / "live-run-reconnecting.png"), full_page=True)
    append(folder, lines[middle:])  # the producer goes on meanwhile, to the end of the run

    with scope_server(env, "--follow-interval", "0.1", port=port):
        # Back: the page reconnects after the last event it had and gets the rest.
        for node_id in ("auth-table", "api-routes", "integration-tests", "deploy-preview"):
            expect(node(page, node_id)).to_have_class(re.compile(r"\bs-done\b"), timeout=PATIENCE_MS)
        expect(node(page, "auth-table").locator(".retry text")).to_have_text("\u00d72")
        expect(page.locator("#fact-events")).to_have_text(str(len(lines)), timeout=PATIENCE_MS)
        expect(page.locator(".log tbody tr[data-seq]")).to_have_count(len(lines), timeout=PATIENCE_MS)
        attempts = sum('"to":"running"' in line for line in lines)
        expect(page.locator(".gantt rect.attempt")).to_have_count(attempts, timeout=PATIENCE_MS)
        # run_end is in: the run is complete, its verdict shows, and the page stops following.
        expect(page.locator("h1 .badge")).to_have_text("flaky", timeout=PATIENCE_MS)
        expect(page.locator("#live-status")).to_have_count(0)
        assert page.evaluate("window.stillTheSamePage") is True
        page.screenshot(path=str(ARTIFACTS / "live-run-after.png"), full_page=True)

        # The scrubber was redrawn with the page: it replays the whole run.
        page.locator("#at").fill("3")
        expect(page.locator("#at-label")).to_contain_text(f"After event 3 of {len(lines) - 1}")
        # Left while the server still answers: a request still in flight as it stops would be
        # reported after the check below.
        page.goto("about:blank")

    # What the browser reported while the server was away, and nothing else.
    unexpected = [
        error
        for error in page.console_errors
        if not re.search(
            r"WebSocket connection to .* failed|Failed to load resource|ERR_CONNECTION_REFUSED", error
        )
    ]
    assert unexpected == []
    page.console_errors.clear()
