"""Export (issue 19): run history as CSV and NDJSON, and a run as the archive folder it came from,
through the real endpoints; the archive round-trips through `ingest_archive`."""

import csv
import io
import json
import tarfile
import urllib.request
from datetime import timedelta

import orjson
import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.utils import timezone

from retention.services import retention_soft_delete_expired
from runs import exports, selectors
from runs.models import Diagnostic, Event, Run
from runs.read_model import RUN_ROW_SHOWN, run_row_data
from tenants.context import tenant_scope
from tenants.models import Tenant
from tenants.services import api_key_create
from tests.conftest import SAMPLE_ARCHIVE, ingest_quietly, manage_env, write_archive_run
from tests.retention.conftest import T0, store_run
from tests.runs.test_api import ALL_NEWEST_FIRST, assert_error
from tests.servers import served
from tests.tenants.conftest import POSTGRES_ONLY, as_service, cloud

pytestmark = pytest.mark.django_db

__all__ = ["as_service", "cloud"]

API = "/api/v1"
EXPORT = f"{API}/runs/export"
SAMPLE_RUNS = sorted(path.name for path in (SAMPLE_ARCHIVE / "runs").iterdir())


def streamed(response) -> bytes:
    assert response.streaming, "an export is streamed"
    return b"".join(response.streaming_content)


def listed(client, query: str = "") -> list[dict]:
    """Every row `GET runs/` shows for `query`, page after page."""
    rows, url = [], f"{API}/runs/?page_size=200&{query}"
    while url:
        body = client.get(url).json()
        rows += body["results"]
        url = body["next"]
    return rows


def csv_export(client, query: str = "") -> list[dict]:
    response = client.get(f"{EXPORT}?format=csv&{query}")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert 'filename="runs.csv"' in response["Content-Disposition"]
    reader = csv.DictReader(io.StringIO(streamed(response).decode()))
    assert tuple(reader.fieldnames or ()) == RUN_ROW_SHOWN
    return list(reader)


def ndjson_export(client, query: str = "") -> list[dict]:
    response = client.get(f"{EXPORT}?format=ndjson&{query}")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-ndjson"
    return [json.loads(line) for line in streamed(response).decode().splitlines()]


def as_csv_cells(row: dict) -> dict:
    """A row of the API as the CSV writes it: JSON for lists and maps, empty for null, text."""
    cells = {}
    for name, value in row.items():
        if isinstance(value, list | dict):
            cells[name] = json.dumps(value, separators=(",", ":"))
        else:
            cells[name] = "" if value is None else str(value)
    return cells


# ---------------------------------------------------------------- GET runs/export


def test_ndjson_is_the_run_list_row_for_row(client, imported):
    assert ndjson_export(client) == listed(client)
    assert [row["run_id"] for row in ndjson_export(client)] == ALL_NEWEST_FIRST


def test_csv_opens_with_a_header_and_a_row_per_run_as_the_api_shows_it(client, imported):
    rows = csv_export(client)
    assert rows == [as_csv_cells(row) for row in listed(client)]
    failed = next(row for row in rows if row["run_id"] == "run_failed")
    assert json.loads(failed["failed_nodes"]) == ["api-routes"]
    assert failed["outcome"] == "failed"


@pytest.mark.parametrize(
    "query",
    [
        "outcome=failed",
        "status=complete",
        "q=RUN_F",
        "node=lint",
        "failed_node=api-routes",
        "started_after=2026-11-20T10:30:00Z&started_before=2026-11-20T13:30:00Z",
        "q=nothing-has-this",
    ],
)
def test_the_filters_are_the_run_lists(client, imported, query):
    assert ndjson_export(client, query) == listed(client, query)
    assert [row["run_id"] for row in csv_export(client, query)] == [
        row["run_id"] for row in listed(client, query)
    ]


def test_nothing_matching_is_a_header_alone_or_an_empty_file(client, imported):
    response = client.get(f"{EXPORT}?format=csv&q=nothing-has-this")
    assert streamed(response).decode().splitlines() == [",".join(RUN_ROW_SHOWN)]
    assert streamed(client.get(f"{EXPORT}?format=ndjson&q=nothing-has-this")) == b""


def test_an_export_longer_than_a_batch_has_every_run_once_in_order(client, many_runs, monkeypatch):
    monkeypatch.setattr(exports, "EXPORT_BATCH", 5)
    expected = [row["run_id"] for row in listed(client)]
    assert len(expected) == 32
    assert [row["run_id"] for row in ndjson_export(client)] == expected
    assert [row["run_id"] for row in csv_export(client)] == expected


@pytest.mark.parametrize(
    ("query", "fields"),
    [
        ("format=xml", ["format"]),
        ("", ["format"]),
        ("format=csv&status=bogus", ["status"]),
        ("format=ndjson&started_after=yesterday", ["started_after"]),
        ("format=csv&q=%00", ["q"]),
        ("format=pdf&outcome=maybe", ["outcome", "format"]),
    ],
)
def test_a_bad_format_or_filter_is_a_400_naming_it(client, imported, query, fields):
    response = client.get(f"{EXPORT}?{query}")
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    details = assert_error(response.json(), "invalid_query")
    assert [error["field"] for error in details["errors"]] == fields


def test_paging_parameters_are_not_the_exports(client, imported):
    # The whole list: a page size or cursor of the run list is not a filter, and is ignored.
    assert len(ndjson_export(client, "page_size=1")) == len(ALL_NEWEST_FIRST)


def test_another_tenants_runs_are_not_exported(client, imported, tmp_path):
    other = tmp_path / "globex"
    write_archive_run(other, "run_globex_only", [{"ts": "2026-11-21T09:00:00.000Z", "event": "run_start"}])
    Tenant.objects.create(slug="globex", name="Globex")
    ingest_quietly(other, "--tenant", "globex")
    assert [row["run_id"] for row in ndjson_export(client)] == ALL_NEWEST_FIRST
    assert client.get(f"{API}/runs/run_globex_only/archive").status_code == 404


def test_the_history_page_links_the_export_of_its_filters(client, imported):
    page = client.get("/?status=failed&q=run").content.decode()
    assert f'href="{EXPORT}?outcome=failed&amp;q=run&amp;format=csv"' in page
    assert f'href="{EXPORT}?outcome=failed&amp;q=run&amp;format=ndjson"' in page
    assert [row["run_id"] for row in ndjson_export(client, "outcome=failed&q=run")] == ["run_failed"]
    # Days on the page, instants in the API: the "to" day is included.
    page = client.get("/?started_from=2026-11-20&started_to=2026-11-20").content.decode()
    assert "started_after=2026-11-20T00%3A00%3A00%2B00%3A00" in page
    assert "started_before=2026-11-21T00%3A00%3A00%2B00%3A00" in page


# ---------------------------------------------------------------- GET runs/{id}/archive


def archive_of(client, run_id: str) -> tarfile.TarFile:
    response = client.get(f"{API}/runs/{run_id}/archive")
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/gzip"
    assert f'filename="{run_id}.tar.gz"' in response["Content-Disposition"]
    return tarfile.open(fileobj=io.BytesIO(streamed(response)), mode="r:gz")


def test_an_archive_is_the_run_folder(client, imported):
    with archive_of(client, "run_flaky") as tar:
        assert tar.getnames() == [
            "run_flaky",
            "run_flaky/transitions.jsonl",
            "run_flaky/graph.json",
            "run_flaky/summary.json",
        ]
        log = tar.extractfile("run_flaky/transitions.jsonl").read()
        graph = json.loads(tar.extractfile("run_flaky/graph.json").read())
        summary = json.loads(tar.extractfile("run_flaky/summary.json").read())
    folder = SAMPLE_ARCHIVE / "runs" / "run_flaky"
    assert graph == json.loads((folder / "graph.json").read_text())
    assert summary == json.loads((folder / "summary.json").read_text())
    original = (folder / "transitions.jsonl").read_bytes()
    if connection.vendor == "sqlite":
        # SQLite keeps each line's text as the producer wrote it.
        assert log == original
    else:
        # PostgreSQL keeps jsonb, which prints its own key order and spacing: equal as JSON.
        assert [orjson.loads(line) for line in log.splitlines()] == [
            orjson.loads(line) for line in original.splitlines()
        ]


def test_a_run_without_graph_or_summary_has_its_log_alone(client, imported):
    with archive_of(client, "run_headless") as tar:
        assert tar.getnames() == ["run_headless", "run_headless/transitions.jsonl"]


def test_a_malformed_line_was_never_stored_and_is_not_exported(client, imported):
    with archive_of(client, "run_dirty") as tar:
        lines = tar.extractfile("run_dirty/transitions.jsonl").read().splitlines()
    original = (SAMPLE_ARCHIVE / "runs" / "run_dirty" / "transitions.jsonl").read_bytes().splitlines()
    assert len(lines) == len(original) - 1
    assert [orjson.loads(line) for line in lines] == [
        orjson.loads(line) for number, line in enumerate(original, start=1) if number != 4
    ]


def test_a_log_longer_than_a_batch_is_whole_and_in_order(client, imported, monkeypatch):
    monkeypatch.setattr(exports, "ARCHIVE_EVENT_BATCH", 4)
    with archive_of(client, "run_flaky") as tar:
        lines = tar.extractfile("run_flaky/transitions.jsonl").read().splitlines()
    original = (SAMPLE_ARCHIVE / "runs" / "run_flaky" / "transitions.jsonl").read_bytes().splitlines()
    assert [orjson.loads(line) for line in lines] == [orjson.loads(line) for line in original]


@pytest.mark.parametrize("run_id", ["run_nope", "bad%20id", "x" * 65])
def test_an_unknown_run_has_no_archive(client, imported, run_id):
    response = client.get(f"{API}/runs/{run_id}/archive")
    assert response.status_code == 404
    assert_error(response.json(), "run_not_found")


def test_a_deleted_run_has_no_archive(client, local_tenant):
    store_run(local_tenant, "expired", T0 - timedelta(days=100))
    retention_soft_delete_expired(tenant=local_tenant, actor="test", now=T0)
    response = client.get(f"{API}/runs/expired/archive")
    assert response.status_code == 410
    assert_error(response.json(), "run_deleted")


# ---------------------------------------------------------------- the round trip


def stored(tenant: Tenant, run_id: str, now) -> tuple[dict, list, list]:
    """What readers see of a run: its row, its events and its diagnostics."""
    with tenant_scope(tenant):
        run = selectors.run_list(tenant=tenant, filters=selectors.RunFilters()).get(run_id=run_id)
        (row,) = selectors.run_rows([run], tenant=tenant, now=now)
        events = list(
            Event.objects.filter(tenant=tenant, run=run.pk)
            .order_by("seq")
            .values_list("seq", "kind", "node", "ts", "payload")
        )
        diagnostics = list(
            Diagnostic.objects.filter(tenant=tenant, run=run.pk)
            .order_by("id")
            .values_list("code", "severity", "seq", "line", "message", "details")
        )
    return run_row_data(row), events, diagnostics


def test_every_run_exported_and_imported_into_an_empty_tenant_is_the_same_run(
    client, imported, local_tenant, tmp_path
):
    copy_root = tmp_path / "copy"
    (copy_root / "runs").mkdir(parents=True)
    run_ids = [*SAMPLE_RUNS, "run_headless", "run_inline"]
    for run_id in run_ids:
        with archive_of(client, run_id) as tar:
            tar.extractall(copy_root / "runs", filter="data")
    copy = Tenant.objects.create(slug="copy", name="Copy")
    ingest_quietly(copy_root, "--tenant", "copy")

    now = timezone.now()
    with tenant_scope(copy):
        assert sorted(Run.objects.filter(tenant=copy).values_list("run_id", flat=True)) == sorted(run_ids)
    for run_id in run_ids:
        row, events, diagnostics = stored(local_tenant, run_id, now)
        copied_row, copied_events, copied_diagnostics = stored(copy, run_id, now)
        # A malformed line was never stored: the copy has neither the line nor its diagnostic.
        lost = [d for d in diagnostics if d[0] == "malformed_line"]
        assert copied_diagnostics == [d for d in diagnostics if d[0] != "malformed_line"], run_id
        row["diagnostic_counts"]["error"] -= len(lost)
        assert copied_row == row, run_id
        assert copied_events == events, run_id
    assert len(lost_somewhere := stored(local_tenant, "run_dirty", now)[2]) == 1
    assert lost_somewhere[0][0] == "malformed_line"


# ---------------------------------------------------------------- cloud mode


def test_in_cloud_a_read_key_exports_its_tenants_runs_only(cloud, world_runs):
    _, acme_key = api_key_create(tenant=world_runs.acme, name="reader", scopes=["read"])
    _, ingest_key = api_key_create(tenant=world_runs.acme, name="producer", scopes=["ingest"])
    auth = {"HTTP_AUTHORIZATION": f"Bearer {acme_key}"}

    response = cloud.get(f"{EXPORT}?format=ndjson", **auth)
    assert response.status_code == 200
    assert [json.loads(line)["run_id"] for line in streamed(response).splitlines()] == ["acme_nightly"]
    response = cloud.get(f"{EXPORT}?format=csv", **auth)
    assert [row["run_id"] for row in csv.DictReader(io.StringIO(streamed(response).decode()))] == [
        "acme_nightly"
    ]

    with tarfile.open(
        fileobj=io.BytesIO(streamed(cloud.get(f"{API}/runs/acme_nightly/archive", **auth)))
    ) as tar:
        assert len(tar.extractfile("acme_nightly/transitions.jsonl").read().splitlines()) == 6
    response = cloud.get(f"{API}/runs/globex_nightly/archive", **auth)
    assert response.status_code == 404
    assert_error(response.json(), "run_not_found")

    # No credential, or a key that only sends runs: refused in the error shape.
    assert cloud.get(f"{EXPORT}?format=csv").status_code in (401, 403)
    response = cloud.get(f"{EXPORT}?format=csv", HTTP_AUTHORIZATION=f"Bearer {ingest_key}")
    assert response.status_code == 403
    assert_error(response.json(), "insufficient_scope")


# ---------------------------------------------------------------- under ASGI and the real server


def test_under_asgi_the_exports_stream_as_asynchronous_iterators(imported, async_client):
    """`manage.py serve` is daphne (ASGI), where Django reads a synchronous iterator whole before
    sending a byte: there the exports hand it an asynchronous one."""

    async def fetch(path: str) -> tuple[bool, bytes]:
        response = await async_client.get(path)
        assert response.status_code == 200
        return response.is_async, b"".join([chunk async for chunk in response.streaming_content])

    is_async, body = async_to_sync(fetch)(f"{EXPORT}?format=ndjson")
    assert is_async
    assert [json.loads(line)["run_id"] for line in body.splitlines()] == ALL_NEWEST_FIRST
    is_async, body = async_to_sync(fetch)(f"{API}/runs/run_flaky/archive")
    assert is_async
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        assert len(tar.extractfile("run_flaky/transitions.jsonl").read().splitlines()) == 35


def test_the_real_server_sends_both_exports(transactional_db, many_runs):
    with served(manage_env(), "--no-follow") as server:
        with urllib.request.urlopen(f"{server.url}{EXPORT}?format=ndjson", timeout=30) as response:
            assert response.headers["Content-Type"] == "application/x-ndjson"
            rows = [json.loads(line) for line in response.read().splitlines()]
        failed_runs = f"{server.url}{EXPORT}?format=csv&outcome=failed"
        with urllib.request.urlopen(failed_runs, timeout=30) as response:
            failed = list(csv.DictReader(io.StringIO(response.read().decode())))
        with urllib.request.urlopen(f"{server.url}{API}/runs/run_flaky/archive", timeout=30) as response:
            archive = response.read()
    assert len(rows) == 32
    assert {row["outcome"] for row in failed} == {"failed"}
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        assert len(tar.extractfile("run_flaky/transitions.jsonl").read().splitlines()) == 35


@POSTGRES_ONLY[0]
@POSTGRES_ONLY[1]
def test_under_row_level_security_the_exports_read_their_tenants_rows(cloud, world_runs, as_service):
    """As the service role, which row-level security binds: each batch is its tenant's own unit of
    work, after the request's transaction has ended."""
    _, key = api_key_create(tenant=world_runs.globex, name="reader", scopes=["read"])
    auth = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    response = cloud.get(f"{EXPORT}?format=ndjson", **auth)
    assert [json.loads(line)["run_id"] for line in streamed(response).splitlines()] == ["globex_nightly"]
    with tarfile.open(
        fileobj=io.BytesIO(streamed(cloud.get(f"{API}/runs/globex_nightly/archive", **auth)))
    ) as tar:
        assert len(tar.extractfile("globex_nightly/transitions.jsonl").read().splitlines()) == 6
    assert cloud.get(f"{API}/runs/acme_nightly/archive", **auth).status_code == 404


def test_a_log_with_non_ascii_text_and_escapes_is_exported_whole(client, local_tenant, tmp_path):
    root = tmp_path / "archive"
    folder = root / "runs" / "run_unicode"
    folder.mkdir(parents=True)
    lines = [
        '{"ts":"2026-11-20T10:00:00.000Z","event":"run_start","run_id":"run_unicode","note":"café ☕ 𝄞"}',
        # Escapes as a producer may write them: PostgreSQL's jsonb prints them as the characters.
        '{"ts": "2026-11-20T10:00:01.000Z", "event": "checkpoint", "text": "line\\nbreak \\u00e9 \\"q\\""}',
        '{"ts":"2026-11-20T10:00:02.000Z","event":"run_end","exit_code":0}',
    ]
    (folder / "transitions.jsonl").write_text("\n".join(lines) + "\n")
    ingest_quietly(root)
    with archive_of(client, "run_unicode") as tar:
        log = tar.extractfile("run_unicode/transitions.jsonl").read()
    if connection.vendor == "sqlite":
        assert log == (folder / "transitions.jsonl").read_bytes()
    assert [orjson.loads(line) for line in log.splitlines()] == [orjson.loads(line) for line in lines]
