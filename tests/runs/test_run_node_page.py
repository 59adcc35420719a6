"""A node in one run (`/runs/<run>/nodes/<node>/`), the run page's event log filters and jumps,
and its problems first: diagnostic counts in the header, the list in log order, malformed lines
shown. Through the pages, as a browser without JavaScript gets them."""

import html as html_lib
import re
from datetime import timedelta
from urllib.parse import quote

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from ingest.simulator import archive_synthesize
from retention.services import retention_soft_delete_expired
from tenants.models import Tenant
from tests.conftest import ingest_quietly, write_archive_run
from tests.retention.conftest import T0, store_run
from tests.runs.test_pages import dag_node, element, page
from tests.tenants.conftest import cloud

__all__ = ["cloud"]

pytestmark = pytest.mark.django_db


def node_url(run_id: str, node_id: str) -> str:
    return f"/runs/{run_id}/nodes/{quote(node_id, safe='')}/"


def attempt_rows(html: str) -> list[dict[str, str]]:
    """Each row of the attempts table: its number, result word, start and end (RFC 3339),
    duration, exit code and error, as shown."""
    rows = []
    for row in re.findall(r'<tr class="attempt-row[^"]*" data-attempt="\d+">(.*?)</tr>', html, re.S):
        cells = [
            re.sub(r"\s+", " ", html_lib.unescape(re.sub(r"<[^>]+>", " ", cell))).strip()
            for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        ]
        times = re.findall(r'<time datetime="([^"]+)"', row)
        rows.append(
            {
                "attempt": cells[0],
                "result": cells[1],
                "start": times[0],
                "end": times[1] if len(times) > 1 else "",
                "duration": cells[4],
                "exit_code": cells[5],
                "error": cells[6],
            }
        )
    return rows


def neighbours(html: str, section: str) -> dict[str, str]:
    """A neighbours list (`dependencies` or `dependents`): node id -> state shown."""
    part = element(html, rf'<section class="card"[^>]*id="{section}">.*?</section>')
    return dict(
        re.findall(
            r'<a class="node-link" href="[^"]+">([^<]+)</a> <span class="badge [^"]+">(\w+)</span>', part
        )
    )


def log_seqs(html: str) -> list[int]:
    return [
        int(s) for s in re.findall(r'<tr id="event-(\d+)"', element(html, r'<table class="log">.*?</table>'))
    ]


# ---------------------------------------------------------------- a node in one run


def test_a_failed_node_shows_each_attempt_with_its_times_exit_code_and_error(client, imported):
    html = page(client, "/runs/run_failed/nodes/api-routes/")
    assert '<h1>api-routes <span class="badge big n-failed" id="node-state">failed</span></h1>' in html
    assert attempt_rows(html) == [
        {"attempt": "1", "result": "failed", "start": "2026-11-20T11:00:35.800Z",
         "end": "2026-11-20T11:01:02.200Z", "duration": "26.4s", "exit_code": "1",
         "error": "api-routes: exit status 1"},
        {"attempt": "2", "result": "failed", "start": "2026-11-20T11:01:02.200Z",
         "end": "2026-11-20T11:01:32.400Z", "duration": "30.2s", "exit_code": "1",
         "error": "api-routes: exit status 1"},
        {"attempt": "3", "result": "failed", "start": "2026-11-20T11:01:32.400Z",
         "end": "2026-11-20T11:01:46.400Z", "duration": "14s", "exit_code": "1",
         "error": "api-routes: exit status 1"},
    ]  # fmt: skip
    assert neighbours(html, "dependencies") == {"auth-table": "done", "users-table": "done"}
    assert neighbours(html, "dependents") == {"integration-tests": "blocked"}
    assert '<a href="/nodes/api-routes/">api-routes across runs →</a>' in html
    # The events that name it, in seq order, each a jump into the run's log.
    assert log_seqs(html) == [11, 14, 15, 16, 17, 18, 19, 20, 21]
    assert '<a href="/runs/run_failed/?seq=14">14</a>' in html
    assert "attempt 1 failed in 26.4s, exit 1" in html


def test_a_blocked_node_says_it_did_not_run_and_names_what_it_waited_on(client, imported):
    html = page(client, "/runs/run_failed/nodes/integration-tests/")
    assert attempt_rows(html) == []
    assert "Not run in this run: blocked by a dependency that failed." in html
    assert neighbours(html, "dependencies") == {"api-routes": "failed", "lint": "done"}
    assert neighbours(html, "dependents") == {"deploy-preview": "blocked"}
    assert log_seqs(html) == [22]  # its pending → blocked


def test_an_open_attempt_of_an_interrupted_run_is_open_and_diagnosed(client, imported):
    html = page(client, "/runs/run_crashed/nodes/api-routes/")
    (attempt,) = attempt_rows(html)
    assert (attempt["result"], attempt["end"], attempt["exit_code"]) == ("open", "", "—")
    diagnostics = element(html, r'<ul class="diagnostics">.*?</ul>')
    assert "<code>died_mid_attempt</code>" in diagnostics


def test_attempts_at_one_instant_are_all_listed(client, imported):
    rows = attempt_rows(page(client, "/runs/run_same_ts/nodes/auth-table/"))
    assert [row["result"] for row in rows] == ["failed", "failed", "ok"]


def assert_node_pages_agree_with_the_api(client, run_id: str) -> None:
    """The node page replays only the node's events; the API replays the whole log: they agree."""
    detail = client.get(f"/api/v1/runs/{run_id}/").json()
    for node in detail["nodes"]:
        html = page(client, node_url(run_id, node["id"]))
        assert f'id="node-state">{node["state"]}</span>' in html
        shown = [(row["attempt"], row["start"], row["end"], row["exit_code"]) for row in attempt_rows(html)]
        expected = [
            (
                str(a["attempt"]),
                a["start"],
                a["end"] or "",
                "—" if a["exit_code"] is None else str(a["exit_code"]),
            )
            for a in node["attempts"]
        ]
        assert shown == expected, node["id"]


@pytest.mark.parametrize(
    "run_id",
    ["run_clean", "run_flaky", "run_failed", "run_crashed", "run_same_ts", "run_dirty", "run_inline"],
)
def test_every_node_page_agrees_with_the_runs_api(client, imported, run_id):
    assert_node_pages_agree_with_the_api(client, run_id)


def test_node_pages_of_simulated_runs_agree_with_the_api(client, local_tenant, tmp_path):
    archive_synthesize(tmp_path, runs=4, nodes=25, seed=5)
    ingest_quietly(tmp_path)
    runs = client.get("/api/v1/runs/").json()["results"]
    assert sum(run["total_attempts"] - run["total_nodes"] + run["blocked"] for run in runs) > 0  # retries
    for run in runs:
        assert_node_pages_agree_with_the_api(client, run["run_id"])


def test_clicking_a_node_in_the_dag_or_the_timeline_opens_it_in_this_run(client, imported):
    html = page(client, "/runs/run_failed/")
    dag = element(html, r'<a href="[^"]*"[^>]*>\s*' + re.escape(dag_node(html, "api-routes")[:40]))
    assert dag.startswith('<a href="/runs/run_failed/nodes/api-routes/"')
    assert re.search(r'<a href="/runs/run_failed/nodes/api-routes/"><text class="g-label[^"]*"', html)
    # The event log's node column too.
    log = element(html, r'<table class="log">.*?</table>')
    assert '<a href="/runs/run_failed/nodes/schema-init/">schema-init</a>' in log


@pytest.mark.parametrize("node_id", ["build/linux x86", "50% done?", "tests#unit", "naïve ü", "a..b"])
def test_node_names_that_need_escaping_in_a_url_still_open(client, local_tenant, tmp_path, node_id):
    graph = {"version": 1, "nodes": [{"id": node_id, "deps": []}]}
    events = [
        {"ts": "2026-11-20T10:00:00.000Z", "event": "run_start", "run_id": "run_odd"},
        {"ts": "2026-11-20T10:00:01.000Z", "event": "transition", "node": node_id, "from": "pending",
         "to": "running", "attempt": 1},
    ]  # fmt: skip
    write_archive_run(tmp_path, "run_odd", events, graph=graph)
    ingest_quietly(tmp_path)
    run_html = page(client, "/runs/run_odd/")
    link = re.search(r'<a href="(/runs/run_odd/nodes/[^"]+)" aria-label', run_html).group(1)
    html = page(client, html_lib.unescape(link))
    assert f"<h1>{html_lib.escape(node_id, quote=False)} " in html.replace("&#x27;", "'")
    assert [row["result"] for row in attempt_rows(html)] == ["open"]


def test_a_node_not_in_the_run_is_a_404_page_that_says_so(client, imported):
    html = page(client, "/runs/run_failed/nodes/fetch/", status=404)  # a node of run_inline only
    assert "Run “run_failed” has no node named “fetch”." in html
    assert "There is no run named “run_nope”." in page(client, "/runs/run_nope/nodes/fetch/", status=404)
    page(client, "/runs/run_failed/nodes/%00/", status=404)
    page(client, f"/runs/run_failed/nodes/{'x' * 300}/", status=404)


def test_a_node_of_a_soft_deleted_run_says_the_run_was_deleted(client, local_tenant):
    store_run(local_tenant, "expired", T0 - timedelta(days=100))
    assert client.get("/runs/expired/nodes/build/").status_code == 200
    retention_soft_delete_expired(tenant=local_tenant, actor="test", now=T0)
    response = client.get("/runs/expired/nodes/build/")
    assert response.status_code == 410
    assert "more than the 90 days" in response.content.decode()


def test_another_tenants_run_node_is_a_404(client, imported, tmp_path):
    events = [
        {"ts": "2026-11-21T09:00:00.000Z", "event": "run_start", "run_id": "run_globex"},
        {"ts": "2026-11-21T09:00:00.000Z", "event": "transition", "node": "globex-secret", "from": "pending",
         "to": "running", "attempt": 1},
    ]  # fmt: skip
    write_archive_run(tmp_path, "run_globex", events)
    Tenant.objects.create(slug="globex", name="Globex")
    ingest_quietly(tmp_path, "--tenant", "globex")
    assert "globex-secret" not in page(client, "/runs/run_globex/nodes/globex-secret/", status=404)


def test_in_cloud_mode_a_member_opens_nodes_of_their_tenants_runs_only(cloud, world_runs):
    cloud.force_login(world_runs.alice)
    response = cloud.get("/runs/acme_nightly/nodes/build/")
    assert response.status_code == 200
    assert attempt_rows(response.content.decode())[0]["result"] == "ok"
    assert cloud.get("/runs/globex_nightly/nodes/build/").status_code == 404
    cloud.force_login(world_runs.bob)
    response = cloud.get("/runs/globex_nightly/nodes/build/")
    assert attempt_rows(response.content.decode())[0]["result"] == "failed"
    assert cloud.get("/runs/acme_nightly/nodes/build/").status_code == 404


# ---------------------------------------------------------------- the event log: filters and jumps


def test_the_log_filters_by_node_and_kind(client, imported):
    html = page(client, "/runs/run_failed/?node=api-routes")
    assert log_seqs(html) == [11, 14, 15, 16, 17, 18, 19, 20, 21]
    html = page(client, "/runs/run_failed/?node=api-routes&kind=node_attempt")
    assert log_seqs(html) == [14, 17, 20]
    assert "3 matching events." in html
    assert '<option value="node_attempt" selected>node_attempt</option>' in html
    assert log_seqs(page(client, "/runs/run_failed/?kind=run_end")) == [24]
    # A node only an event of an unknown kind names is still a filter.
    assert log_seqs(page(client, "/runs/run_inline/?kind=checkpoint")) == [2]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("node=nope", "Node: “nope” is not a node of this run. The log below is not filtered by node."),
        ("kind=heartbeat", "Kind: “heartbeat” is not a kind of event in this run&#x27;s log, which has "
                           "node_attempt, run_end, run_start, transition. The log below is not filtered by "
                           "kind."),
        ("seq=abc", "Event: “abc” is not an event of this run: its events are 0 to 24."),
        ("seq=25", "“25” is not an event of this run: its events are 0 to 24."),
        ("seq=-1", "“-1” is not an event of this run: its events are 0 to 24."),
        ("node=%00", "Node: Null characters are not allowed."),
        ("seq=99999999999999999999999", "is not an event of this run"),
    ],
)  # fmt: skip
def test_a_bad_filter_value_is_named_and_the_whole_log_shown(client, imported, query, message):
    html = page(client, f"/runs/run_failed/?{query}")
    errors = element(html, r'<ul class="form-errors" role="alert">.*?</ul>')
    assert message in errors
    assert log_seqs(html) == list(range(25))


def test_a_jump_to_a_seq_lands_on_its_page_at_the_event(client, local_tenant, tmp_path):
    archive_synthesize(tmp_path, runs=1, nodes=40, seed=7)
    ingest_quietly(tmp_path)
    response = client.get("/runs/run_7_000000/?seq=123")
    assert response.status_code == 302
    assert response["Location"] == "?log_from=100#event-123"
    html = page(client, "/runs/run_7_000000/?log_from=100")
    assert 'id="event-123"' in html
    # With filters that show the event, the jump keeps them and the page starts at it.
    kind = re.search(r'<tr id="event-123"[^>]*>.*?<span class="kind k-(\w+)"', html, re.S).group(1)
    response = client.get(f"/runs/run_7_000000/?kind={kind}&seq=123")
    assert response["Location"] == f"?kind={kind}&log_from=123#event-123"
    assert log_seqs(page(client, f"/runs/run_7_000000/?kind={kind}&log_from=123"))[0] == 123
    # With filters that hide it, the jump goes to it in the whole log.
    other = "run_start" if kind != "run_start" else "run_end"
    response = client.get(f"/runs/run_7_000000/?kind={other}&seq=123")
    assert response["Location"] == "?log_from=100#event-123"


def test_a_filtered_log_pages_through_every_matching_event_once(client, local_tenant, tmp_path):
    archive_synthesize(tmp_path, runs=1, nodes=60, seed=3)
    ingest_quietly(tmp_path)
    base = "/runs/run_3_000000/"

    def walk(url: str, link: str) -> list[list[int]]:
        pages = []
        while url:
            html = page(client, url)
            pages.append(log_seqs(html))
            found = re.search(rf'<a href="\?([^"]*)#log">{link}', html)
            url = f"{base}?{html_lib.unescape(found.group(1))}" if found else None
        return pages

    forwards = walk(f"{base}?kind=transition", "Later events")
    total = int(re.search(r"events 0\u201399 of (\d+)", page(client, base)).group(1))
    transitions = []
    for start in range(0, total, 100):
        rows = re.findall(r'<tr id="event-(\d+)"(.*?)</tr>', page(client, f"{base}?log_from={start}"), re.S)
        transitions += [int(seq) for seq, row in rows if 'class="kind k-transition"' in row]
    assert len(forwards) > 1
    assert [seq for seqs in forwards for seq in seqs] == transitions
    assert all(len(seqs) == 100 for seqs in forwards[:-1])
    # And back from the last page, page by page.
    last_start = forwards[-1][0]
    backwards = walk(f"{base}?kind=transition&log_from={last_start}", "← Earlier events")
    assert backwards == forwards[::-1]


# ---------------------------------------------------------------- problems first


def test_a_clean_run_with_an_error_shows_it_in_its_header(client, imported):
    html = page(client, "/runs/run_dirty/")
    head = element(html, r'<div class="page-head" id="run-head">.*?</div>\s*<section')
    assert '<span class="badge big v-clean">clean</span>' in head
    assert '<a class="sev sev-error" href="#run-diagnostics">1 error</a>' in head
    assert 'id="run-diagnostics"' in html
    assert 'id="diag-counts"' not in page(client, "/runs/run_failed/")


def test_a_malformed_line_is_shown_escaped_and_shortened(client, local_tenant, tmp_path):
    hostile = '{"ts": "<script>alert(1)</script>", "pad": "' + "x" * 400 + '"}'
    write_archive_run(tmp_path, "run_hostile", [])
    with open(tmp_path / "runs/run_hostile/transitions.jsonl", "w") as log:
        log.write('{"ts":"2026-11-20T10:00:00.000Z","event":"run_start","run_id":"run_hostile"}\n')
        log.write(hostile + "\n")
    ingest_quietly(tmp_path)
    html = page(client, "/runs/run_hostile/")
    raw = element(html, r'<code class="raw-line"[^>]*>.*?</code>')
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in raw
    assert "<script>alert" not in html
    shown = html_lib.unescape(re.sub(r"<[^>]+>", "", raw))
    assert len(shown) <= 160 and shown.endswith("…")


def test_diagnostics_are_listed_in_log_order(client, local_tenant, tmp_path):
    graph = {"version": 1, "nodes": [{"id": "a", "deps": []}]}
    lines = [
        '{"ts":"2026-11-20T10:00:00.000Z","event":"run_start","run_id":"run_mixed"}',  # seq 0
        '{"ts":"2026-11-20T10:00:01.000Z","event":"transition","node":"a","from":"pending","to":"running","attempt":1}',
        "not json at line 3",
        '{"ts":"2026-11-20T10:00:02.000Z","event":"heartbeat"}',  # seq 2: unknown_event
        "not json at line 5",
        '{"ts":"2026-11-20T10:00:00.500Z","event":"transition","node":"a","from":"running","to":"done","attempt":1}',
        '{"ts":"2026-11-20T10:00:03.000Z","event":"run_end","exit_code":0}',  # seq 4
    ]  # fmt: skip
    write_archive_run(tmp_path, "run_mixed", [], graph=graph)
    (tmp_path / "runs/run_mixed/transitions.jsonl").write_text("\n".join(lines) + "\n")
    ingest_quietly(tmp_path)
    html = page(client, "/runs/run_mixed/")
    panel = element(html, r'<ul class="diagnostics">.*?</ul>')
    places = re.findall(r"<code>(\w+)</code>.*?(event \d+|log line \d+)", panel, re.S)
    # attempt_without_record is found at seq 3 (the node moved on) but belongs to seq 1, where the
    # attempt began; the malformed lines sit between the events around them.
    assert places == [
        ("attempt_without_record", "event 1"),
        ("malformed_line", "log line 3"),
        ("unknown_event", "event 2"),
        ("malformed_line", "log line 5"),
        ("ts_went_back", "event 3"),
    ]
    assert '<a class="sev sev-error" href="#run-diagnostics">2 errors</a>' in html
    assert '<a class="sev sev-warning" href="#run-diagnostics">1 warning</a>' in html
    assert '<a class="sev sev-info" href="#run-diagnostics">2 infos</a>' in html


def test_the_node_across_runs_links_to_it_in_each_run(client, imported):
    html = page(client, "/nodes/api-routes/")
    assert '<a href="/runs/run_failed/nodes/api-routes/" title="api-routes in run_failed">' in html


def test_a_node_page_costs_the_same_queries_in_a_small_and_a_large_run(client, local_tenant, tmp_path):
    archive_synthesize(tmp_path, runs=1, nodes=5, seed=11)
    archive_synthesize(tmp_path, runs=1, nodes=400, seed=12)
    ingest_quietly(tmp_path)
    counts = []
    for run_id in ("run_11_000000", "run_12_000000"):
        first = client.get(f"/api/v1/runs/{run_id}/").json()["nodes"][0]["id"]
        with CaptureQueriesContext(connection) as queries:
            page(client, node_url(run_id, first))
        counts.append(len(queries))
    # The tenant, the run, its node's events replayed, the events shown, its diagnostics (and, on
    # PostgreSQL, the savepoint around the request's tenant).
    assert counts[0] == counts[1] <= 7
