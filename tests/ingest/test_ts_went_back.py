"""`ts_went_back` (SPEC section 4): an event whose `ts` is earlier than the one before it is noted
as an info diagnostic, through both ways in (the archive import and the ingest API), and changes
nothing else: order stays append order."""

import orjson
import pytest

from tests.conftest import ingest_quietly, write_archive_run

pytestmark = pytest.mark.django_db

GRAPH = {"version": 1, "nodes": [{"id": "build", "deps": []}]}


def events(run_id: str) -> list[dict]:
    """A clean run whose producer's clock moves back twice: at seq 2 (by a second) and at seq 4
    (written with an offset, so only the instant shows it is earlier)."""
    return [
        {"ts": "2026-11-20T10:00:00.000Z", "event": "run_start", "run_id": run_id, "graph": GRAPH},
        {"ts": "2026-11-20T10:00:05.000Z", "event": "transition", "node": "build", "from": "pending",
         "to": "running", "attempt": 1},
        {"ts": "2026-11-20T10:00:04.000Z", "event": "node_attempt", "node": "build", "attempt": 1,
         "ok": True, "duration_s": 1.0, "exit_code": 0},
        {"ts": "2026-11-20T10:00:06.000Z", "event": "transition", "node": "build", "from": "running",
         "to": "done", "attempt": 1},
        # 11:00:05+01:00 is 10:00:05Z: a later text, an earlier instant.
        {"ts": "2026-11-20T11:00:05.000+01:00", "event": "run_end", "exit_code": 0},
    ]  # fmt: skip


def went_back(detail: dict) -> list[dict]:
    return [d for d in detail["diagnostics"] if d["code"] == "ts_went_back"]


def assert_noted(client, run_id: str) -> None:
    detail = client.get(f"/api/v1/runs/{run_id}/").json()
    noted = went_back(detail)
    assert [(d["severity"], d["seq"]) for d in noted] == [("info", 2), ("info", 4)]
    assert noted[0]["details"] == {
        "ts": "2026-11-20T10:00:04.000Z",
        "previous_ts": "2026-11-20T10:00:05.000Z",
        "event": "node_attempt",
        "node": "build",
    }
    assert "the producer's clock moved back" in noted[0]["message"]
    # Only noted: the run is still clean, in append order, with its counts in the row.
    assert detail["outcome"] == "clean"
    assert detail["diagnostic_counts"] == {"error": 0, "warning": 0, "info": 2}
    html = client.get(f"/runs/{run_id}/").content.decode()
    assert "<code>ts_went_back</code>" in html


def test_the_archive_import_notes_a_clock_that_went_back(client, local_tenant, tmp_path):
    write_archive_run(tmp_path, "run_clock", events("run_clock"))
    ingest_quietly(tmp_path)
    assert_noted(client, "run_clock")


def test_the_ingest_api_notes_a_clock_that_went_back_across_batches(client, local_tenant):
    log = events("run_clock")
    # The second batch begins earlier than the first ended: the stored state remembers the last ts.
    for start, batch in ((0, log[:2]), (2, log[2:])):
        body = b"".join(orjson.dumps({**event, "seq": start + i}) + b"\n" for i, event in enumerate(batch))
        response = client.post(
            "/api/v1/runs/run_clock/events", data=body, content_type="application/x-ndjson"
        )
        assert response.status_code == 200, response.content
    assert_noted(client, "run_clock")


def test_equal_and_later_timestamps_are_not_noted(client, local_tenant, tmp_path):
    # Many events share a ts (SPEC section 2): the same instant is not a step back.
    log = [{**event, "ts": "2026-11-20T10:00:00.000Z"} for event in events("run_still")]
    write_archive_run(tmp_path, "run_still", log)
    ingest_quietly(tmp_path)
    assert went_back(client.get("/api/v1/runs/run_still/").json()) == []
