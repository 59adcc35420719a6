"""The write path's services (`runs.services`) take data and answer with data or a refusal."""

import orjson
import pytest
from django.utils import timezone

from runs.errors import AlreadyWritten, RunDeletedError, RunEnded, RunNotStarted, SeqConflict, SeqGap
from runs.models import Diagnostic, Event, Run, RunNode
from runs.reduction import Diagnostic as Found
from runs.services import RunLog, run_append_events, run_document_set, runs_import

T = "2026-11-20T10:00:00.000Z"
GRAPH = {"version": 1, "nodes": [{"id": "build", "deps": []}]}


def start(run_id: str) -> dict:
    return {"ts": T, "event": "run_start", "run_id": run_id}


def items(*events: dict) -> list:
    return [(event, orjson.dumps(event).decode()) for event in events]


def append(tenant, run_id: str, *events: dict, first_seq: int | None = None):
    return run_append_events(
        tenant=tenant,
        run_id=run_id,
        events=list(events),
        payloads=[orjson.dumps(e).decode() for e in events],
        first_seq=first_seq,
    )


def test_a_first_batch_creates_the_run_row_and_a_retry_counts_as_duplicates(local_tenant):
    receipt = append(local_tenant, "r1", start("r1"), first_seq=0)
    assert (receipt.accepted, receipt.duplicates, receipt.next_seq, receipt.created) == (1, 0, 1, True)
    again = append(local_tenant, "r1", start("r1"), first_seq=0)
    assert (again.accepted, again.duplicates, again.next_seq, again.created) == (0, 1, 1, False)
    run = Run.objects.get(run_id="r1")
    assert Event.objects.filter(run=run).count() == run.next_seq == 1


@pytest.mark.parametrize(
    ("events", "first_seq", "refusal"),
    [
        ([{"ts": T, "event": "run_end", "exit_code": 0}], None, RunNotStarted),
        ([start("r2")], 5, SeqGap),
    ],
)
def test_refusals_are_plain_exceptions_and_store_nothing(local_tenant, events, first_seq, refusal):
    with pytest.raises(refusal) as raised:
        append(local_tenant, "r2", *events, first_seq=first_seq)
    assert raised.value.code and raised.value.message
    assert not Run.objects.filter(run_id="r2").exists()


def test_a_different_event_at_a_stored_seq_and_events_after_run_end_are_refused(local_tenant):
    end = {"ts": T, "event": "run_end", "exit_code": 0}
    append(local_tenant, "r3", start("r3"), end, first_seq=0)
    with pytest.raises(SeqConflict):
        append(local_tenant, "r3", dict(start("r3"), extra=1), first_seq=0)
    with pytest.raises(RunEnded):
        append(local_tenant, "r3", {"ts": T, "event": "note"})
    assert Run.objects.get(run_id="r3").next_seq == 2


def test_a_document_is_written_once(local_tenant):
    first = run_document_set(tenant=local_tenant, run_id="r4", kind="graph", document=GRAPH)
    assert (first.written, first.created) == (True, True)
    same = run_document_set(tenant=local_tenant, run_id="r4", kind="graph", document=GRAPH)
    assert (same.written, same.created) == (False, False)
    with pytest.raises(AlreadyWritten):
        run_document_set(tenant=local_tenant, run_id="r4", kind="graph", document={"version": 1, "nodes": []})
    assert list(RunNode.objects.filter(run__run_id="r4").values_list("node_id", flat=True)) == ["build"]


def test_a_soft_deleted_run_is_refused_and_left_out_of_an_import(local_tenant):
    append(local_tenant, "r5", start("r5"))
    Run.objects.filter(run_id="r5").update(deleted_at=timezone.now())
    with pytest.raises(RunDeletedError):
        append(local_tenant, "r5", {"ts": T, "event": "note"})
    logs = [RunLog(run_id="r5", new=False, log_size=0), RunLog(run_id="r6", log_size=0)]
    imported = runs_import(tenant=local_tenant, runs=logs)
    assert imported.deleted == ["r5"]
    assert [change.run.run_id for change in imported.changes] == ["r6"]
    assert Run.objects.including_deleted().get(run_id="r5").next_seq == 1


def test_an_import_read_at_a_stale_offset_is_left_alone(local_tenant):
    line = orjson.dumps(start("r7")) + b"\n"
    log = RunLog(run_id="r7", log_size=len(line), log_end=len(line), lines=1, items=items(start("r7")))
    assert runs_import(tenant=local_tenant, runs=[log]).stale == []
    # Read again as if the first import had not happened: offset 0, while the run is at the line's end.
    again = RunLog(run_id="r7", log_size=len(line), log_end=len(line), lines=1, items=items(start("r7")))
    imported = runs_import(tenant=local_tenant, runs=[again])
    assert (imported.stale, imported.changes) == (["r7"], [])
    run = Run.objects.get(run_id="r7")
    assert (run.next_seq, run.log_offset, run.log_lines) == (1, len(line), 1)


def test_an_import_keeps_a_log_reading_s_diagnostics_where_they_stand(local_tenant):
    bad = Found("malformed_line", "line 2 skipped: not JSON", line=2)
    log = RunLog(
        run_id="r8",
        log_size=100,
        log_end=100,
        lines=3,
        items=[*items(start("r8")), bad, *items({"ts": T, "event": "note"})],
    )
    imported = runs_import(tenant=local_tenant, runs=[log])
    (change,) = imported.changes
    assert change.appended == 2
    run = Run.objects.get(run_id="r8")
    codes = list(Diagnostic.objects.filter(run=run).values_list("code", flat=True))
    assert codes[0] == "malformed_line"
    assert (run.next_seq, run.log_offset, run.log_lines) == (2, 100, 3)
