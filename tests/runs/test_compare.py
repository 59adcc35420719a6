"""Two runs compared, as a browser without JavaScript gets the page: node by node, the totals, and
the first event at which the logs part ways; and the run page's link to the previous run of its graph."""

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from ingest.simulator import archive_synthesize, synthetic_run_id
from retention.services import retention_soft_delete_expired
from tests.conftest import SAMPLE_ARCHIVE, ingest_quietly, write_archive_run
from tests.runs.test_pages import element, page

pytestmark = pytest.mark.django_db

MINUS = "\N{MINUS SIGN}"  # differences are signed as in print

# The sample runs' graph, in graph.json's order.
GRAPH_ORDER = [
    "schema-init", "auth-table", "users-table", "api-routes", "lint", "integration-tests", "deploy-preview",
]  # fmt: skip


def node_rows(html: str) -> list[tuple[str, str]]:
    """(node, change) for each row of the nodes table, in order."""
    return [(node, change) for change, node in re.findall(r'<tr class="c-(\w+)" data-node="([^"]+)">', html)]


def node_cells(html: str, node_id: str) -> list[str]:
    """The text of each cell of a node's row, tags removed."""
    row = element(html, rf'<tr class="c-\w+" data-node="{re.escape(node_id)}">.*?</tr>')
    return [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]


def totals_cells(html: str, label: str) -> list[str]:
    row = element(html, rf'<tr><th scope="row">{label}</th>.*?</tr>')
    return [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]


def divergence_rows(html: str) -> dict[str, tuple[str, str]]:
    """side -> (what its event did, or what stands instead; the event's link, or "")."""
    found = {}
    for side, row in re.findall(r'<tr data-side="(\w)">(.*?)</tr>', html, re.S):
        cells = re.findall(r"<td>(.*?)</td>", row, re.S)
        link = re.search(r'class="event-link" href="([^"]+)"', row)
        found[side] = (re.sub(r"<[^>]+>", "", cells[1]).strip(), link.group(1) if link else "")
    return found


def divergence_node(html: str) -> str:
    summary = element(html, r'<p id="divergence-summary">.*?</p>')
    return re.sub(r"<[^>]+>", "", summary).strip()


def copy_run(root: Path, source: str, run_id: str, *, lines: int | None = None, ts_shift: str = "") -> None:
    """A run with `source`'s graph and the first `lines` events of its log, under another id."""
    log = (SAMPLE_ARCHIVE / "runs" / source / "transitions.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in log[:lines]]
    events[0]["run_id"] = run_id
    if ts_shift:
        for event in events:
            event["ts"] = ts_shift + event["ts"][len(ts_shift) :]
    graph = json.loads((SAMPLE_ARCHIVE / "runs" / source / "graph.json").read_text())
    write_archive_run(root, run_id, events, graph=graph)


# ---------------------------------------------------------------- the comparison


def test_run_flaky_beside_run_clean_node_by_node(client, imported):
    html = page(client, "/runs/run_clean/compare/run_flaky/")
    assert 'run_flaky <span class="muted">compared with</span>' in html
    # The nodes that retried in run_flaky differ, and come first; the rest follow in graph order.
    assert node_rows(html) == [
        ("auth-table", "changed"),
        ("api-routes", "changed"),
        ("integration-tests", "changed"),
        ("schema-init", "same"),
        ("users-table", "same"),
        ("lint", "same"),
        ("deploy-preview", "same"),
    ]
    assert "3 of 7 differ" in html
    # node, change, state a, state b, attempts a, b, b minus a, time a, b, b minus a
    assert node_cells(html, "auth-table") == [
        "auth-table", "changed", "done", "done", "1", "2", "+1", "25.7s", "1m 05.2s", "+39.5s",
    ]  # fmt: skip
    assert node_cells(html, "api-routes") == [
        "api-routes", "changed", "done", "done", "1", "3", "+2", "11.8s", "1m 42s", "+1m 30.2s",
    ]  # fmt: skip
    assert node_cells(html, "lint") == [
        "lint", "same", "done", "done", "1", "1", "0", "25.3s", "15s", MINUS + "10.3s",
    ]  # fmt: skip
    # The runs' totals in the history's words.
    assert totals_cells(html, "Result")[:2] == ["clean", "flaky"]
    assert totals_cells(html, "Attempts") == ["7", "11", "+4"]
    assert totals_cells(html, "Flake retries") == ["0", "4", "+4"]
    assert totals_cells(html, "Duration") == ["2m 07.9s", "8m 01.6s", "+5m 53.7s"]
    assert totals_cells(html, "Events") == ["23", "35", "+12"]
    assert "clean_with_flake" not in html


def test_the_first_event_where_run_flaky_and_run_clean_part_ways(client, imported):
    html = page(client, "/runs/run_clean/compare/run_flaky/")
    # auth-table's first attempt, begun at event 7 in both, fails in run_flaky (event 9) where it
    # succeeded in run_clean (event 11): the first node whose own story differs.
    assert divergence_node(html) == (
        "The first thing the runs did differently concerns node auth-table, "
        "after 1 matching event of its own:"
    )
    assert divergence_rows(html) == {
        "a": ("node_attempt auth-table attempt 1 ok", "/runs/run_clean/?at=11&amp;log_from=0#event-11"),
        "b": ("node_attempt auth-table attempt 1 failed", "/runs/run_flaky/?at=9&amp;log_from=0#event-9"),
    }
    # Event by event, the logs part at 9 too: users-table's record in run_clean.
    assert "the logs first differ at event 9." in html
    # The link opens each run as it stood after that event, with the event in its log.
    run_page = page(client, "/runs/run_flaky/?at=9&log_from=0")
    assert re.search(r'<tr id="event-9"[^>]*class="[^"]*current', run_page)


def test_only_the_differences_on_request(client, copies):
    html = page(client, "/runs/run_clean/compare/run_flaky/?show=differences")
    assert [node for node, _ in node_rows(html)] == ["auth-table", "api-routes", "integration-tests"]
    assert re.search(
        r'class="chip active" href="\?show=differences" aria-current="true">Only differences', html
    )
    html = page(client, "/runs/run_clean/compare/run_clean_again/?show=differences")
    assert "No node differs: same states and attempts in both runs." in html


@pytest.fixture
def copies(imported: Path) -> Path:
    """run_clean again (the same log, a day later), its first ten events alone, and its log with
    events 7 and 8 (two nodes starting at once) logged the other way round."""
    copy_run(imported, "run_clean", "run_clean_again", ts_shift="2026-11-21")
    copy_run(imported, "run_clean", "run_clean_cut", lines=10)
    copy_run(imported, "run_clean", "run_clean_swapped", ts_shift="2026-11-22")
    log = imported / "runs" / "run_clean_swapped" / "transitions.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    lines[7], lines[8] = lines[8], lines[7]
    log.write_text("".join(lines))
    ingest_quietly(imported)
    return imported


def test_logs_that_did_the_same_do_not_diverge(client, copies):
    html = page(client, "/runs/run_clean/compare/run_clean_again/")
    assert "The two logs agree event by event (23 events each)" in html
    assert {change for _node, change in node_rows(html)} == {"same"}
    assert "0 of 7 differ" in html


def test_parallel_nodes_logged_in_another_order_did_the_same(client, copies):
    html = page(client, "/runs/run_clean/compare/run_clean_swapped/")
    assert 'id="divergence-summary"' not in html
    assert (
        "Every node did the same things in both runs; only the order in which parallel nodes' events" in html
    )
    assert "first at event 7." in html


def test_a_log_that_stops_early_diverges_where_it_ends(client, copies):
    html = page(client, "/runs/run_clean/compare/run_clean_cut/")
    assert divergence_node(html).endswith("node users-table, after 2 matching events of its own:")
    rows = divergence_rows(html)
    assert rows["a"] == (
        "transition users-table running → done (attempt 1)",
        "/runs/run_clean/?at=10&amp;log_from=0#event-10",
    )
    assert rows["b"] == ("none: its events for users-table stop here; the log ends after event 9", "")
    # run_clean_cut stopped mid-run: its running nodes and what it never started differ.
    assert dict(node_rows(html))["lint"] == "same"
    assert node_cells(html, "auth-table")[:4] == ["auth-table", "changed", "done", "running"]
    assert node_cells(html, "deploy-preview")[:7] == [
        "deploy-preview", "changed", "done", "pending", "1", "0", MINUS + "1",
    ]  # fmt: skip


def test_added_and_removed_nodes(client, imported):
    html = page(client, "/runs/run_clean/compare/run_inline/")
    rows = node_rows(html)
    assert rows == [(node, "removed") for node in GRAPH_ORDER] + [("fetch", "added"), ("build", "added")]
    assert "9 of 9 differ: 2 added in b, 7 removed from a" in html
    assert node_cells(html, "fetch")[:7] == ["fetch", "added", "not in a", "done", "", "1", ""]
    assert node_cells(html, "lint")[:7] == ["lint", "removed", "done", "not in b", "1", "", ""]
    # Both begin with run_start; at event 1 each starts a node the other does not have (the tie
    # goes to the node named first).
    assert divergence_node(html).endswith("node fetch:")
    assert divergence_rows(html) == {
        "a": ("none: this run has no event for fetch", ""),
        "b": (
            "transition fetch pending → running (attempt 1)",
            "/runs/run_inline/?at=1&amp;log_from=0#event-1",
        ),
    }


def test_a_failed_run_beside_an_interrupted_one(client, imported):
    html = page(client, "/runs/run_failed/compare/run_crashed/")
    assert totals_cells(html, "Result")[:2] == ["failed", "interrupted"]
    # run_crashed's log stops during api-routes' first attempt: how long it took is not known.
    assert node_cells(html, "api-routes") == [
        "api-routes", "changed", "failed", "running", "3", "1", MINUS + "2", "1m 10.6s", "—", "",
    ]  # fmt: skip
    assert node_cells(html, "integration-tests")[:4] == ["integration-tests", "changed", "blocked", "pending"]


def move(second: int, source: str, target: str, attempt: int) -> dict:
    """A transition of node `build`, `second` seconds into 2026-11-22T10:00."""
    ts = f"2026-11-22T10:00:0{second}.000Z"
    return {
        "ts": ts,
        "event": "transition",
        "node": "build",
        "from": source,
        "to": target,
        "attempt": attempt,
    }


def test_an_attempt_without_its_record_took_until_its_node_moved_on(client, imported):
    graph = {"version": 1, "nodes": [{"id": "build", "deps": []}]}

    def log(run_id: str, *, lost_record: bool) -> list[dict]:
        last = 2 if lost_record else 1
        # With a lost record, the first attempt fails 5 s in without a node_attempt; a second succeeds.
        retry = [move(5, "running", "failed", 1), move(5, "failed", "running", 2)] if lost_record else []
        record = {"event": "node_attempt", "node": "build", "ok": True, "duration_s": 2.0, "exit_code": 0}
        return [
            {"ts": "2026-11-22T10:00:00.000Z", "event": "run_start", "run_id": run_id},
            move(0, "pending", "running", 1),
            *retry,
            {"ts": "2026-11-22T10:00:07.000Z", **record, "attempt": last},
            move(7, "running", "done", last),
            {"ts": "2026-11-22T10:00:08.000Z", "event": "run_end", "exit_code": 0},
        ]

    write_archive_run(imported, "run_build_once", log("run_build_once", lost_record=False), graph=graph)
    write_archive_run(imported, "run_build_twice", log("run_build_twice", lost_record=True), graph=graph)
    ingest_quietly(imported)
    html = page(client, "/runs/run_build_once/compare/run_build_twice/")
    # 5 s from its start to its failure, and the second attempt's recorded 2 s.
    assert node_cells(html, "build") == [
        "build",
        "changed",
        "done",
        "done",
        "1",
        "2",
        "+1",
        "2s",
        "7s",
        "+5s",
    ]
    assert divergence_rows(html)["b"][0] == "transition build running → failed (attempt 1)"


def test_a_swap_link_puts_b_first(client, imported):
    html = page(client, "/runs/run_clean/compare/run_flaky/")
    assert 'id="compare-swap" href="/runs/run_flaky/compare/run_clean/"' in html
    swapped = page(client, "/runs/run_flaky/compare/run_clean/")
    assert node_cells(swapped, "auth-table")[4:7] == ["2", "1", MINUS + "1"]


# ---------------------------------------------------------------- bad requests


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("/runs/run_nope/compare/run_clean/", "run_nope"),
        ("/runs/run_clean/compare/run_nope/", "run_nope"),
        ("/runs/run_nope/compare/run_nope/", "run_nope"),
        ("/runs/run_gone/compare/run_missing/", "run_gone"),
    ],
)
def test_a_run_that_does_not_exist_is_a_404_naming_it(client, imported, url, named):
    html = page(client, url, status=404)
    assert f"There is no run named “{named}” to compare." in html


def test_a_run_removed_by_retention_says_so_as_its_own_page_does(client, imported, local_tenant):
    # The sample runs are from 2026-11-20; a year on, every one of them is past 90 days.
    retention_soft_delete_expired(tenant=local_tenant, actor="test", now=datetime(2027, 12, 1, tzinfo=UTC))
    response = client.get("/runs/run_clean/compare/run_flaky/")
    assert response.status_code == 410
    assert "run_clean" in response.text and "90 days" in response.text
    assert client.get("/runs/run_flaky/compare/run_flaky/").status_code == 410


def test_ids_no_run_can_have_are_a_404(client, imported):
    page(client, "/runs/%00/compare/run_clean/", status=404)
    page(client, "/runs/run_clean/compare/..%2F/", status=404)
    assert "There is no run named “-x” to compare." in page(client, "/runs/run_clean/compare/-x/", status=404)


def test_a_run_compared_with_itself_says_so(client, imported):
    html = page(client, "/runs/run_flaky/compare/run_flaky/")
    notice = element(html, r'<p class="notice" id="compare-same".*?</p>')
    assert "a run compared with itself has no differences to show" in notice
    assert 'href="/runs/run_clean/compare/run_flaky/"' in notice
    html = page(client, "/runs/run_clean/compare/run_clean/")
    assert "No earlier run has the same graph" in html


# ---------------------------------------------------------------- the previous run of a graph


def previous_link(html: str) -> str | None:
    found = re.search(r'<a id="compare-previous" href="([^"]+)"', html)
    return found.group(1) if found else None


@pytest.mark.parametrize(
    ("run_id", "link"),
    [
        ("run_clean", None),  # the first run of the sample graph
        ("run_flaky", "/runs/run_clean/compare/run_flaky/"),
        ("run_failed", "/runs/run_flaky/compare/run_failed/"),
        ("run_dirty", "/runs/run_same_ts/compare/run_dirty/"),
        ("run_inline", None),  # the only run of its graph
        ("run_headless", None),  # not started: newest in history, yet no run has its one node
    ],
)
def test_every_run_page_links_to_the_previous_run_of_its_graph(client, imported, run_id, link):
    assert previous_link(page(client, f"/runs/{run_id}/")) == link


def test_the_previous_run_is_the_latest_earlier_start_with_the_same_nodes(client, copies):
    # run_clean_cut started when run_clean did and was stored after it: it comes after run_clean.
    assert previous_link(page(client, "/runs/run_clean_cut/")) == "/runs/run_clean/compare/run_clean_cut/"
    # run_clean_again started a day later: the latest of the graph before it is run_dirty.
    assert previous_link(page(client, "/runs/run_clean_again/")) == "/runs/run_dirty/compare/run_clean_again/"
    # Another graph in between (one node more) is passed over.
    copy_run(copies, "run_clean", "run_bigger", ts_shift="2026-11-20T16")
    bigger = json.loads((copies / "runs" / "run_bigger" / "graph.json").read_text())
    bigger["nodes"].append({"id": "smoke-test", "deps": ["deploy-preview"]})
    (copies / "runs" / "run_bigger" / "graph.json").write_text(json.dumps(bigger))
    ingest_quietly(copies)
    assert previous_link(page(client, "/runs/run_bigger/")) is None
    assert previous_link(page(client, "/runs/run_clean_again/")) == "/runs/run_dirty/compare/run_clean_again/"


# ---------------------------------------------------------------- tenants


def test_another_tenants_run_cannot_be_compared_or_linked(cloud, world, sample_archive):
    # acme has the sample runs; globex has one run of the same graph between run_clean and run_flaky.
    ingest_quietly(sample_archive, "--tenant", "acme")
    globex_archive = sample_archive.parent / "globex"
    copy_run(globex_archive, "run_clean", "run_between", ts_shift="2026-11-20T09:3")
    ingest_quietly(globex_archive, "--tenant", "globex")

    cloud.force_login(world.alice)
    assert node_rows(page(cloud, "/runs/run_clean/compare/run_flaky/"))[0] == ("auth-table", "changed")
    html = page(cloud, "/runs/run_clean/compare/run_between/", status=404)
    assert "There is no run named “run_between” to compare." in html
    page(cloud, "/runs/run_between/compare/run_flaky/", status=404)
    assert previous_link(page(cloud, "/runs/run_flaky/")) == "/runs/run_clean/compare/run_flaky/"

    cloud.force_login(world.bob)
    page(cloud, "/runs/run_clean/compare/run_flaky/", status=404)
    page(cloud, "/runs/run_between/compare/run_between/")
    # globex's run has no earlier run of its graph in globex, whatever acme holds.
    assert previous_link(page(cloud, "/runs/run_between/")) is None


# ---------------------------------------------------------------- big runs


@pytest.fixture
def big_pair(imported: Path) -> tuple[str, str]:
    """Two runs of one synthetic 250-node DAG, whose flaky and failing nodes differ."""
    archive_synthesize(imported, runs=2, nodes=250, seed=3, flake=0.1, fail=0.004)
    ingest_quietly(imported)
    return synthetic_run_id(3, 0), synthetic_run_id(3, 1)


def test_a_big_comparison_pages_its_nodes_differences_first(client, big_pair):
    a, b = big_pair
    html = page(client, f"/runs/{a}/compare/{b}/")
    rows = node_rows(html)
    assert len(rows) == 200
    differing = int(re.search(r"(\d+) of 250 differ", html).group(1))
    assert 0 < differing < 200
    assert [change != "same" for _node, change in rows] == [True] * differing + [False] * (200 - differing)
    assert "nodes 1\N{EN DASH}200 of 250" in html
    assert re.search(r'<a rel="next" href="\?page=2#compare-nodes">', html)
    second = page(client, f"/runs/{a}/compare/{b}/?page=2")
    assert len(node_rows(second)) == 50
    assert {node for node, _ in rows}.isdisjoint(node for node, _ in node_rows(second))
    # The filter starts again from the first page.
    assert re.search(r'href="\?show=differences" aria-current="false">Only differences', second)
    assert len(node_rows(page(client, f"/runs/{a}/compare/{b}/?show=differences"))) == differing


def test_the_comparisons_queries_do_not_grow_with_the_runs(client, big_pair):
    def queries(url: str) -> list[str]:
        with CaptureQueriesContext(connection) as captured:
            page(client, url)
        return [query["sql"] for query in captured.captured_queries]

    small = queries("/runs/run_clean/compare/run_flaky/")
    big = queries(f"/runs/{big_pair[0]}/compare/{big_pair[1]}/")
    assert len(small) == len(big)
    # The two runs in one query, then each one's log.
    assert sum('FROM "runs_event"' in sql for sql in big) == 2
