"""A run page at any size: the focused subgraph of what failed, the whole graph on request, a
timeline paged by node. Through the page, as a browser gets it."""

import re

import pytest

from ingest.simulator import run_simulate, run_write
from runs.pictures import FOCUS_MAX_NODES
from runs.views import MAX_DRAWN_NODES, TIMELINE_PAGE
from tests.big_runs import BIG_RUN_FAILURES, BIG_RUN_NODES, big_run
from tests.conftest import ingest_quietly

pytestmark = pytest.mark.django_db

# A chain of five leads to `fail`, which blocks a chain of four; thirty nodes beside them succeed,
# one of them (`beside`) downstream of the chain without leading to the failure.
CHAIN = {"a0": [], "a1": ["a0"], "a2": ["a1"], "a3": ["a2"], "a4": ["a3"], "fail": ["a4"]}
BLOCKED = {"b1": ["fail"], "b2": ["b1"], "b3": ["b2"], "b4": ["b3"]}
OTHERS = {f"other{i:02d}": [] for i in range(30)} | {"beside": ["a4", "other00"]}


def imported_run(tmp_path, run) -> None:
    run_write(tmp_path, run)
    ingest_quietly(tmp_path)


def get(client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, response.content[:500]
    return response.content.decode()


def section(html: str, element_id: str) -> str:
    """One element of the page by id, up to the first element after it that the page closes it with."""
    found = re.search(rf'<(\w+)[^>]*id="{element_id}".*?</\1>', html, re.S)
    assert found, element_id
    return found.group(0)


def drawn(svg: str) -> list[str]:
    return re.findall(r'<g class="node [^"]*" transform="[^"]*" data-node="([^"]+)"', svg)


def x_of(svg: str, node_id: str) -> int:
    return int(re.search(rf'transform="translate\((\d+),\d+\)" data-node="{node_id}"', svg).group(1))


@pytest.fixture
def chain_run(local_tenant, tmp_path):
    run = run_simulate("run_chain", CHAIN | BLOCKED | OTHERS, {"fail": [False, False, False]})
    imported_run(tmp_path, run)
    return run


def test_the_focused_subgraph_holds_the_failure_three_steps_up_and_down(client, chain_run):
    html = get(client, "/runs/run_chain/")
    focus = section(html, "dag-focus-svg")
    assert sorted(drawn(focus)) == ["a2", "a3", "a4", "b1", "b2", "b3", "fail"]
    # Lined up on the failure: dependencies to its left, blocked nodes to its right, by steps.
    columns = [x_of(focus, node_id) for node_id in ("a2", "a3", "a4", "fail", "b1", "b2", "b3")]
    assert columns == sorted(set(columns))
    assert re.search(r'class="node s-failed[^"]*"[^>]*data-node="fail"', focus)
    assert re.findall(r'<a class="chip" href="/nodes/([^/]+)/">', html) == ["fail"]
    assert "2 more dependencies and 1 more blocked node are in the whole graph" in html
    # A graph this size is drawn whole below it, every node once.
    assert sorted(drawn(section(html, "dag-full-svg"))) == sorted(CHAIN | BLOCKED | OTHERS)


def test_a_small_run_has_no_focused_subgraph(client, imported):
    html = get(client, "/runs/run_failed/")
    assert 'id="dag-focus"' not in html
    assert len(drawn(section(html, "dag-full-svg"))) == 7
    assert "Timeline pages" not in html


def test_a_clean_run_has_no_focused_subgraph(client, local_tenant, tmp_path):
    imported_run(tmp_path, run_simulate("run_clean_big", CHAIN | BLOCKED | OTHERS))
    assert 'id="dag-focus"' not in get(client, "/runs/run_clean_big/")


@pytest.fixture
def big(local_tenant, tmp_path):
    run = big_run("run_big")
    imported_run(tmp_path, run)
    return run


def test_a_2000_node_run_page_leads_with_its_failures_and_stays_small(client, big):
    response = client.get("/runs/run_big/")
    assert response.status_code == 200
    assert len(response.content) < 1_500_000
    html = response.content.decode()
    failed = big.summary["failed_nodes"]
    assert len(failed) == BIG_RUN_FAILURES
    focus = drawn(section(html, "dag-focus-svg"))
    assert set(failed) <= set(focus) and len(focus) <= FOCUS_MAX_NODES
    assert sorted(re.findall(r'<a class="chip" href="/nodes/([^/]+)/">', html)) == sorted(failed)
    # The whole graph is drawn on request; the page says so and links to it.
    assert 'id="dag-full-svg"' not in html
    assert f"The whole graph has {BIG_RUN_NODES} nodes" in html
    assert "?dag=full#dag-full" in html
    # The timeline's first page: the failures first, then the blocked nodes, one page of rows.
    labels = re.findall(r'<text class="g-label s-(\w+)"[^>]*data-node="([^"]+)"', html)
    assert len(labels) == TIMELINE_PAGE
    assert [node for state, node in labels[:BIG_RUN_FAILURES]] == sorted(failed, key=lambda n: int(n[1:]))
    assert {state for state, _ in labels[: BIG_RUN_FAILURES + big.summary["blocked"]]} == {
        "failed",
        "blocked",
    }
    assert f"nodes 1\N{EN DASH}{TIMELINE_PAGE} of {BIG_RUN_NODES}" in html


def test_the_timeline_pages_through_every_node(client, big):
    seen = []
    for start in range(0, BIG_RUN_NODES, TIMELINE_PAGE):
        html = get(client, f"/runs/run_big/?nodes_from={start}")
        seen += re.findall(r'<text class="g-label[^"]*"[^>]*data-node="([^"]+)"', html)
    assert sorted(seen) == sorted(big.graph["nodes"][i]["id"] for i in range(BIG_RUN_NODES))
    last = get(client, f"/runs/run_big/?nodes_from={BIG_RUN_NODES + 50}")
    assert f"nodes {BIG_RUN_NODES - TIMELINE_PAGE + 1}\N{EN DASH}{BIG_RUN_NODES} of {BIG_RUN_NODES}" in last


def test_the_whole_graph_on_request_and_a_search_draws_what_it_finds(client, big):
    full = drawn(section(get(client, "/runs/run_big/?dag=full"), "dag-full-svg"))
    assert len(full) == MAX_DRAWN_NODES
    assert set(big.summary["failed_nodes"]) <= set(full)

    html = get(client, "/runs/run_big/?find=N1500")
    svg = section(html, "dag-full-svg")
    assert "n1500" in drawn(svg)
    assert re.findall(r'<g class="node s-\w+ found"[^>]*data-node="([^"]+)"', svg) == ["n1500"]
    assert "1 node matches “N1500”" in html
    nothing = get(client, "/runs/run_big/?find=no-such-node")
    assert "0 nodes match “no-such-node”" in nothing


def test_a_failure_deep_in_a_long_chain_is_drawn_near_the_start(client, local_tenant, tmp_path):
    chain = {f"c{i:03d}": [f"c{i - 1:03d}"] if i else [] for i in range(300)}
    imported_run(tmp_path, run_simulate("run_long_chain", chain, {"c150": [False, False, False]}))
    html = get(client, "/runs/run_long_chain/")
    focus = section(html, "dag-focus-svg")
    assert drawn(focus) == ["c147", "c148", "c149", "c150", "c151", "c152", "c153"]
    # Three columns of dependencies before it, whatever its depth in the whole graph.
    assert x_of(focus, "c150") == 3 * (x_of(focus, "c148") - x_of(focus, "c147")) + x_of(focus, "c147")
    assert "147 more dependencies and 146 more blocked nodes are in the whole graph" in html
