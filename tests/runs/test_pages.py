"""The pages: history, run replay and node across runs, as a browser without JavaScript gets them."""

import itertools
import json
import re

import pytest
from django.conf import settings
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from ingest.simulator import archive_synthesize
from runs.pictures import GANTT_CHART_W, GANTT_LABEL_W
from tenants.models import Tenant
from tests.conftest import ingest_quietly, write_archive_run

pytestmark = pytest.mark.django_db


def page(client, url: str, status: int = 200) -> str:
    response = client.get(url)
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"].startswith("text/html")
    return response.content.decode()


def history_rows(html: str) -> list[str]:
    return re.findall(r'<a class="run-link" href="/runs/([^/]+)/">', html)


def element(html: str, pattern: str) -> str:
    found = re.search(pattern, html, re.S)
    assert found, pattern
    return found.group(0)


def dag_node(html: str, node_id: str) -> str:
    """The SVG group drawing one node of the DAG."""
    return element(html, rf'<g class="node [^"]*"[^>]*data-node="{re.escape(node_id)}".*?</g>\s*</g>')


def node_state(html: str, node_id: str) -> str:
    return re.search(r'class="node s-(\w+)"', dag_node(html, node_id)).group(1)


def blocking_edges(html: str) -> set[tuple[str, str]]:
    return set(re.findall(r'<path class="edge blocking"[^>]*data-from="([^"]+)" data-to="([^"]+)"', html))


def gantt_bars(html: str, node_id: str) -> list[str]:
    """The class of each attempt bar of a node's timeline row, in order."""
    row = element(
        html,
        rf'data-node="{re.escape(node_id)}">[^<]*</text>(?:</a>)?'
        r'(\s*<rect class="attempt[^>]*>.*?</rect>)*',
    )
    return re.findall(r'<rect class="attempt ([^"]+)"', row)


# ---------------------------------------------------------------- history


def test_history_lists_runs_newest_first_with_result_words(client, imported):
    html = page(client, "/")
    assert history_rows(html) == [
        "run_headless",
        "run_inline",
        "run_dirty",
        "run_same_ts",
        "run_crashed",
        "run_failed",
        "run_flaky",
        "run_clean",
    ]
    # Colour and text: every result is a word as well as a class.
    for word in ("clean", "flaky", "failed", "interrupted"):
        assert f'<span class="badge v-{word}">{word}</span>' in html
    row = element(html, r'<a class="run-link" href="/runs/run_flaky/">.*?</tr>')
    assert "8m 01.6s" in row  # duration
    assert ">11<" in row  # attempts
    assert '<span class="flake">4</span>' in row  # flake retries
    failed_row = element(html, r'<a class="run-link" href="/runs/run_failed/">.*?</tr>')
    assert '<a class="node-link" href="/nodes/api-routes/">api-routes</a>' in failed_row
    dirty_row = element(html, r'<a class="run-link" href="/runs/run_dirty/">.*?</tr>')
    assert '<span class="sev sev-error">1 error</span>' in dirty_row


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status=failed", ["run_failed"]),
        ("status=flaky", ["run_same_ts", "run_flaky"]),
        ("status=clean", ["run_inline", "run_dirty", "run_clean"]),
        ("status=interrupted", ["run_headless", "run_crashed"]),
        ("status=running", []),
        ("q=FAIL", ["run_failed"]),
        ("node=fetch", ["run_inline"]),
        ("failed_node=api-routes", ["run_failed"]),
        ("started_from=2026-11-20&started_to=2026-11-20", [
            "run_inline", "run_dirty", "run_same_ts", "run_crashed", "run_failed", "run_flaky", "run_clean",
        ]),
        ("started_from=2026-11-21", []),
        ("started_to=2026-11-19", []),
        ("status=failed&node=lint", ["run_failed"]),
    ],
)  # fmt: skip
def test_history_filters(client, imported, query, expected):
    assert history_rows(page(client, f"/?{query}")) == expected


def test_the_filter_chips_link_to_each_result_and_mark_the_current_one(client, imported):
    html = page(client, "/?status=failed&q=run")
    assert re.search(r'class="chip chip-failed active"\s+href="\?q=run&amp;status=failed"', html)
    assert re.search(r'class="chip chip-flaky"\s+href="\?q=run&amp;status=flaky"', html)
    assert re.search(r'class="chip"\s+href="\?q=run"', html)
    assert "Clear filters" in html


def test_bad_filters_are_explained_not_a_crash(client, imported):
    html = page(client, "/?started_from=yesterday&status=sideways")
    assert 'class="form-errors"' in html
    assert "Started from: Enter a valid date." in html
    assert history_rows(html) == []


@pytest.mark.parametrize("size", ["9999", "0", "-1", "ten"])
def test_a_bad_page_size_says_what_was_wrong_never_no_runs_yet(client, imported, size):
    html = page(client, f"/?page_size={size}")
    errors = element(html, r'<ul class="form-errors".*?</ul>')
    assert f"Per page: {size} is not a page size here: choose one of 25, 50, 100, 200." in errors
    assert "No runs yet" not in html
    assert "No runs shown: a filter value above is not valid." in html


def test_history_pages_with_cursor_links_keeping_filters(client, many_runs):
    seen, url = [], "/?page_size=25"
    while url:
        html = page(client, url)
        seen += history_rows(html)
        found = re.search(r'<a rel="next" href="([^"]+)"', html)
        url = found.group(1).replace("&amp;", "&") if found else None
    assert len(seen) == len(set(seen)) == 32
    html = page(client, "/?q=run_&page_size=25")
    assert len(history_rows(html)) == 25
    next_url = re.search(r'<a rel="next" href="([^"]+)"', html).group(1).replace("&amp;", "&")
    assert "q=run_" in next_url
    rest = history_rows(page(client, next_url))
    assert rest and not set(rest) & set(history_rows(html))
    previous_url = re.search(r'<a rel="prev" href="([^"]+)"', page(client, next_url)).group(1)
    assert history_rows(page(client, previous_url.replace("&amp;", "&"))) == history_rows(html)


def test_an_outdated_cursor_shows_the_newest_runs_with_a_notice(client, imported):
    html = page(client, "/?cursor=garbage")
    assert "That page link is out of date" in html
    assert history_rows(html)[0] == "run_headless"


def test_history_chart_has_one_bar_per_listed_run(client, imported):
    html = page(client, "/?status=flaky")
    chart = element(html, r'<figure class="chart card">.*?</figure>')
    bars = re.findall(r'<rect class="bar v-(\w+)"', chart)
    assert bars == ["flaky", "flaky"]
    assert "<title>run_flaky: flaky, 8m 01.6s</title>" in chart
    assert 'href="/runs/run_flaky/"' in chart


def test_history_page_queries_do_not_grow_with_page_size(client, many_runs):
    counts = set()
    for page_size in (25, 200):
        with CaptureQueriesContext(connection) as queries:
            html = page(client, f"/?page_size={page_size}")
        assert len(history_rows(html)) == min(page_size, 32)
        counts.add(len(queries))
        run_queries = [q["sql"] for q in queries.captured_queries if '"runs_' in q["sql"]]
        assert len(run_queries) == 2  # the page, and the open attempts of its interrupted runs
    assert len(counts) == 1


def test_an_empty_history_says_how_to_import(client, local_tenant):
    assert "manage.py ingest_archive" in page(client, "/")


# ---------------------------------------------------------------- a run


def test_run_failed_shows_the_failed_node_and_what_it_blocked(client, imported):
    html = page(client, "/runs/run_failed/")
    assert node_state(html, "api-routes") == "failed"
    api_routes = dag_node(html, "api-routes")
    assert '<tspan class="attempt-words">3 attempts</tspan>' in api_routes
    assert re.search(r'<g class="retry"[^>]*>\s*<circle r="11"/><text[^>]*>\u00d73</text>', api_routes)
    for blocked in ("integration-tests", "deploy-preview"):
        assert node_state(html, blocked) == "blocked"
        assert '<tspan class="attempt-words">not run</tspan>' in dag_node(html, blocked)
    assert node_state(html, "lint") == "done"
    assert blocking_edges(html) == {
        ("api-routes", "integration-tests"),
        ("integration-tests", "deploy-preview"),
    }
    assert gantt_bars(html, "api-routes") == ["o-failed"] * 3
    assert gantt_bars(html, "lint") == ["o-ok"]
    assert gantt_bars(html, "deploy-preview") == []
    assert "4 done" in html and "1 failed" in html and "2 blocked" in html


def test_the_dag_is_layered_left_to_right_by_dependency_depth(client, imported):
    html = page(client, "/runs/run_failed/")

    def x_of(node_id: str) -> int:
        return int(re.search(r'transform="translate\((\d+),', dag_node(html, node_id)).group(1))

    assert x_of("schema-init") == x_of("lint") < x_of("auth-table") == x_of("users-table")
    assert x_of("users-table") < x_of("api-routes") < x_of("integration-tests") < x_of("deploy-preview")


def test_replay_shows_the_run_as_it_stood_after_event_n(client, imported):
    html = page(client, "/runs/run_failed/?at=5")
    assert "After event 5 of 24" in html
    assert "#5 transition auth-table pending → running (attempt 1)" in html
    assert node_state(html, "schema-init") == "done"
    assert node_state(html, "lint") == "running"
    assert node_state(html, "auth-table") == "running"
    for later in ("users-table", "api-routes", "integration-tests", "deploy-preview"):
        assert node_state(html, later) == "pending"
    assert blocking_edges(html) == set()
    assert '<tspan class="attempt-words">not run</tspan>' in dag_node(html, "api-routes")
    # Attempts not begun yet are hidden; those under way are drawn open.
    assert gantt_bars(html, "api-routes") == ["o-failed is-hidden"] * 3
    assert gantt_bars(html, "lint") == ["o-open"]
    assert gantt_bars(html, "schema-init") == ["o-ok"]
    assert re.search(r'<tr id="event-6" data-seq="6" class="future">', html)
    assert re.search(r'<tr id="event-5" data-seq="5" class=" current">', html)
    assert 'value="5"' in element(html, r'<input type="range"[^>]*>')


def test_replay_mid_retry_counts_attempts_begun(client, imported):
    html = page(client, "/runs/run_failed/?at=16")  # api-routes has just begun attempt 2
    assert node_state(html, "api-routes") == "running"
    assert '<tspan class="attempt-words">2 attempts</tspan>' in dag_node(html, "api-routes")
    assert gantt_bars(html, "api-routes") == ["o-failed", "o-open", "o-failed is-hidden"]


@pytest.mark.parametrize("at", ["24", "999", "-3", "x"])
def test_replay_positions_out_of_range_are_clamped_or_ignored(client, imported, at):
    html = page(client, f"/runs/run_failed/?at={at}")
    if at == "-3":
        assert "After event 0 of 24" in html
    else:
        assert "Final state, event 24" in html
        assert node_state(html, "api-routes") == "failed"


def test_the_replay_data_for_the_scrubber_is_on_the_page(client, imported):
    html = page(client, "/runs/run_failed/")
    data = json.loads(
        re.search(r'<script id="replay-data" type="application/json">(.*?)</script>', html).group(1)
    )
    assert data["lastSeq"] == 24
    assert len(data["labels"]) == len(data["eventX"]) == 25
    assert data["labels"][0] == "#0 run_start by core/orchestrator.py"
    assert data["eventX"] == sorted(data["eventX"])  # this log's timestamps never go back
    changes = json.loads(
        dag_node(html, "api-routes").split('data-changes="')[1].split('"')[0].replace("&quot;", '"')
    )
    assert [state for _seq, state in changes] == [
        "running",
        "failed",
        "running",
        "failed",
        "running",
        "failed",
    ]


def test_the_page_works_without_javascript(client, imported):
    html = page(client, "/runs/run_failed/")
    form = element(html, r'<form class="scrubber" method="get" id="scrubber">.*?</form>')
    assert '<button type="submit" class="show">Show</button>' in form
    assert '<input type="range" id="at" name="at"' in form


def test_run_crashed_is_interrupted_with_its_open_attempt(client, imported):
    html = page(client, "/runs/run_crashed/")
    assert '<span class="badge big v-interrupted">interrupted</span>' in html
    assert "without <code>run_end</code>" in html
    assert gantt_bars(html, "api-routes") == ["o-open"]
    assert "<code>died_mid_attempt</code>" in html
    with override_settings(KAHN_STALE_AFTER=10**10):
        html = page(client, "/runs/run_crashed/")
    assert '<span class="badge big v-running">running</span>' in html
    assert "died_mid_attempt" not in html


def test_run_same_ts_draws_three_attempts_at_one_instant(client, imported):
    html = page(client, "/runs/run_same_ts/")
    assert gantt_bars(html, "auth-table") == ["o-failed", "o-failed", "o-ok"]
    assert node_state(html, "auth-table") == "done"
    assert "\u00d73" in dag_node(html, "auth-table")  # the retry badge


def gantt_rects(html: str, node_id: str) -> list[dict[str, str]]:
    """The attributes of each attempt bar of a node's timeline row, in order."""
    row = element(
        html,
        rf'data-node="{re.escape(node_id)}">[^<]*</text>(?:</a>)?'
        r'(\s*<rect class="attempt[^>]*>.*?</rect>)*',
    )
    return [
        dict(re.findall(r'([\w-]+)="([^"]*)"', rect)) | {"narrow": str(" data-narrow" in rect)}
        for rect in re.findall(r'<rect class="attempt[^>]*>', row)
    ]


def test_zero_length_attempts_are_wide_enough_apart_and_failures_solid_red(client, imported):
    html = page(client, "/runs/run_same_ts/")
    bars = gantt_rects(html, "auth-table")
    assert [bar["data-outcome"] for bar in bars] == ["failed", "failed", "ok"]
    for bar in bars:
        assert float(bar["width"]) >= 6
    for left, right in itertools.pairwise(bars):
        assert float(right["x"]) >= float(left["x"]) + float(left["width"]) + 2
    # Too narrow for stripes, the failed bars are filled with the failure colour.
    assert [bar["narrow"] for bar in bars[:2]] == ["True", "True"]
    assert (
        ".gantt .o-failed[data-narrow] { fill: var(--failed); }"
        in (settings.BASE_DIR / "static" / "scope.css").read_text()
    )


def test_back_to_back_attempts_are_drawn_apart(client, imported):
    html = page(client, "/runs/run_failed/")
    bars = gantt_rects(html, "api-routes")
    assert len(bars) == 3
    for left, right in itertools.pairwise(bars):
        assert float(right["x"]) >= float(left["x"]) + float(left["width"]) + 2


@pytest.mark.parametrize("run_id", ["run_clean", "run_failed", "run_same_ts", "run_crashed"])
def test_the_timeline_axis_runs_to_the_run_end_with_labels_apart(client, imported, run_id):
    html = page(client, f"/runs/{run_id}/")
    svg = element(html, r'<svg class="gantt".*?</svg>')
    ticks = [
        (float(x), label)
        for x, label in re.findall(r'<text class="tick" x="([\d.]+)"[^>]*>([^<]+)</text>', svg)
    ]
    assert ticks[-1][0] == GANTT_LABEL_W + GANTT_CHART_W  # the run's end
    assert ticks[0] == (GANTT_LABEL_W, "0s")
    for (left, _), (right, _) in itertools.pairwise(ticks):
        assert right - left >= 48


def test_zero_failed_and_blocked_are_not_in_the_failure_colour(client, imported):
    html = page(client, "/runs/run_clean/")
    assert '<span class="count">0 failed</span>' in html
    assert '<span class="count">0 blocked</span>' in html
    html = page(client, "/runs/run_failed/")
    assert '<span class="count s-failed">1 failed</span>' in html
    assert '<span class="count s-blocked">2 blocked</span>' in html


def test_diagnostics_panel_names_code_severity_and_place(client, imported):
    html = page(client, "/runs/run_dirty/")
    panel = element(html, r'<ul class="diagnostics">.*?</ul>')
    assert '<span class="sev sev-error">error</span>' in panel
    assert "<code>malformed_line</code>" in panel
    assert "log line 4" in panel
    html = page(client, "/runs/run_inline/")
    panel = element(html, r'<ul class="diagnostics">.*?</ul>')
    assert "<code>unknown_event</code>" in panel
    assert 'href="?log_from=0#event-2">event 2</a>' in panel
    assert "No diagnostics" in page(client, "/runs/run_failed/")


def test_the_producers_summary_is_shown_beside_the_reduction_when_they_differ(
    client, local_tenant, sample_archive
):
    path = sample_archive / "runs/run_flaky/summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "total_attempts": 12}))
    ingest_quietly(sample_archive)
    html = page(client, "/runs/run_flaky/")
    table = element(html, r'<table class="compare">.*?</table>')
    assert re.search(r"<code>total_attempts</code></th><td><code>12</code></td><td><code>11</code>", table)
    assert "The producer's summary differs" in html
    assert "summary differs" not in page(client, "/runs/run_failed/")


def test_unknown_fields_and_kinds_are_shown(client, imported):
    html = page(client, "/runs/run_inline/")
    assert "Fetch sources" in dag_node(html, "fetch")  # a node's extra fields, in its tooltip
    log = element(html, r'<table class="log">.*?</table>')
    assert '<span class="kind k-checkpoint">checkpoint</span>' in log
    assert "{&quot;note&quot;:&quot;cache warm&quot;}" in log
    assert "{&quot;host&quot;:&quot;ci-runner-3&quot;}" in log


def test_the_event_log_pages_in_seq_order(client, local_tenant, tmp_path):
    archive_synthesize(tmp_path, runs=1, nodes=40, seed=7)
    ingest_quietly(tmp_path)
    html = page(client, "/runs/run_7_000000/")
    seqs = [int(s) for s in re.findall(r'<tr id="event-(\d+)"', html)]
    assert seqs == list(range(100))
    later = re.search(r'<a href="\?([^"]*)#log">Later events', html).group(1).replace("&amp;", "&")
    html = page(client, f"/runs/run_7_000000/?{later}")
    seqs = [int(s) for s in re.findall(r'<tr id="event-(\d+)"', html)]
    assert seqs[0] == 100 and seqs == sorted(seqs)
    assert "Earlier events" in html


def test_a_run_without_graph_or_start_is_still_drawn(client, imported):
    html = page(client, "/runs/run_headless/")
    assert node_state(html, "warm-up") == "running"
    assert "<code>missing_run_start</code>" in html


def test_a_run_with_a_graph_and_no_events_yet(client, local_tenant, tmp_path):
    write_archive_run(
        tmp_path, "run_waiting", [], graph={"version": 1, "nodes": [{"id": "only", "deps": []}]}
    )
    ingest_quietly(tmp_path)
    html = page(client, "/runs/run_waiting/")
    assert node_state(html, "only") == "pending"
    assert "No events yet" in html
    assert 'id="scrubber"' not in html


def test_an_unknown_run_is_a_404_page(client, imported):
    html = page(client, "/runs/run_nope/", status=404)
    assert "There is no run named “run_nope”." in html
    page(client, "/runs/%00/", status=404)


# ---------------------------------------------------------------- nodes


def test_a_node_across_runs(client, imported):
    html = page(client, "/nodes/api-routes/")
    stats = dict(
        (label, value)
        for value, label in re.findall(
            r'<span class="value">([^<]+)</span><span class="label">([^<]+)</span>', html
        )
    )
    # Six sample runs have api-routes: it flaked in run_flaky, failed in run_failed, died in run_crashed.
    assert stats["ran"] == "6"
    assert stats["failed"] == "1"
    assert stats["flaked (done after retries)"] == "1"
    strip = re.findall(r'<a class="cell n-(\w+)" href="/runs/(\w+)/"', html)
    assert [run for _v, run in strip] == [
        "run_clean", "run_flaky", "run_failed", "run_crashed", "run_same_ts", "run_dirty",
    ]  # fmt: skip
    assert dict((run, verdict) for verdict, run in strip) == {
        "run_clean": "clean",
        "run_flaky": "flaked",
        "run_failed": "failed",
        "run_crashed": "running",
        "run_same_ts": "clean",
        "run_dirty": "clean",
    }


def test_a_node_page_names_run_results_in_the_history_words(client, imported):
    html = page(client, "/nodes/api-routes/")
    words = dict(
        re.findall(
            r'href="/runs/(\w+)/">\1</a></td>.*?'
            r'<td>(?:<span class="badge v-\w+">)?([^<]*)(?:</span>)?</td>\s*</tr>',
            html,
            re.S,
        )
    )
    assert words["run_flaky"] == "flaky"
    assert words["run_crashed"] == "interrupted"
    assert words["run_failed"] == "failed"
    assert words["run_clean"] == "clean"
    assert "clean_with_flake" not in html
    assert "not finished" not in html


def test_the_node_index_ranks_flaky_and_failing_nodes_first(client, imported):
    html = page(client, "/nodes/")
    nodes = re.findall(r'<a class="node-link" href="/nodes/([^/]+)/">', html)
    assert nodes[0] == "api-routes"
    assert set(nodes) >= {"schema-init", "lint", "fetch", "build", "warm-up"}


def test_a_node_that_never_failed_shows_no_failure_colour(client, imported):
    html = page(client, "/nodes/lint/")
    assert '<div class="stat"><span class="value">0</span><span class="label">failed</span></div>' in html
    html = page(client, "/nodes/api-routes/")
    assert '<div class="stat s-failed"><span class="value">1</span><span class="label">failed</span>' in html


def test_an_unknown_node_is_a_404_page(client, imported):
    assert "No run has a node named" in page(client, "/nodes/no-such-node/", status=404)
    page(client, "/nodes/%00/", status=404)


def test_another_tenants_runs_and_nodes_are_invisible(client, imported, tmp_path):
    events = [
        {"ts": "2026-11-21T09:00:00.000Z", "event": "run_start", "run_id": "run_globex"},
        {"ts": "2026-11-21T09:00:00.000Z", "event": "transition", "node": "globex-secret", "from": "pending",
         "to": "running", "attempt": 1},
    ]  # fmt: skip
    write_archive_run(tmp_path, "run_globex", events)
    Tenant.objects.create(slug="globex", name="Globex")
    ingest_quietly(tmp_path, "--tenant", "globex")
    assert "run_globex" not in page(client, "/")
    page(client, "/runs/run_globex/", status=404)
    page(client, "/nodes/globex-secret/", status=404)
    assert "globex-secret" not in page(client, "/nodes/")
