"""`manage.py ingest_archive` (SPEC sections 2 and 10), through the command an operator runs."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from ingest.simulator import archive_synthesize, run_live
from runs.models import Diagnostic, Event, Run, RunNode
from runs.reduction import MAX_EVENT_BYTES
from tenants.context import tenant_scope
from tenants.models import Tenant
from tests.conftest import PROJECT, manage, manage_env
from tests.runs.test_reduction import RUN_FLAKY_ROW

pytestmark = pytest.mark.django_db

ROW_FIELDS = [f for f in RUN_FLAKY_ROW if f not in ("run_id", "started", "ended")]


def ingest(root: Path, *args: str) -> str:
    out = StringIO()
    call_command("ingest_archive", str(root), *args, stdout=out, stderr=out)
    return out.getvalue()


def row_of(run: Run) -> dict:
    row = {name: getattr(run, name) for name in ROW_FIELDS}
    row["run_id"] = run.run_id
    row["started"] = (
        run.started.isoformat(timespec="milliseconds").replace("+00:00", "Z") if run.started else None
    )
    row["ended"] = run.ended.isoformat(timespec="milliseconds").replace("+00:00", "Z") if run.ended else None
    return row


def log_of(root: Path, run_id: str) -> Path:
    return root / "runs" / run_id / "transitions.jsonl"


def append(root: Path, run_id: str, text: str) -> None:
    with open(log_of(root, run_id), "a", newline="") as log:
        log.write(text)


def stored_events(run_id: str) -> list[dict]:
    return [e.payload for e in Event.objects.filter(run__run_id=run_id).order_by("seq")]


# ---------------------------------------------------------------- the sample archive


def test_every_sample_run_gets_the_row_spec_section_4_defines(local_tenant, sample_archive):
    ingest(sample_archive)
    runs = {run.run_id: run for run in Run.objects.filter(tenant=local_tenant)}
    assert sorted(runs) == ["run_clean", "run_crashed", "run_dirty", "run_failed", "run_flaky", "run_same_ts"]
    assert row_of(runs["run_flaky"]) == RUN_FLAKY_ROW
    for run_id in ("run_clean", "run_failed", "run_same_ts"):
        summary = json.loads((sample_archive / "runs" / run_id / "summary.json").read_text())
        assert row_of(runs[run_id]) == {k: summary[k] for k in RUN_FLAKY_ROW}, run_id
        assert runs[run_id].summary == summary
    assert not Diagnostic.objects.filter(code="summary_mismatch").exists()


def test_run_same_ts_ends_with_the_right_final_states(local_tenant, sample_archive):
    ingest(sample_archive)
    nodes = RunNode.objects.filter(run__run_id="run_same_ts").order_by("position")
    assert {n.node_id: (n.state, n.attempts) for n in nodes}["auth-table"] == ("done", 3)
    assert {n.state for n in nodes} == {"done"}
    run = Run.objects.get(run_id="run_same_ts")
    assert (run.outcome, run.flake_retries) == ("clean_with_flake", 2)


def test_run_crashed_is_interrupted_and_died_mid_attempt(local_tenant, sample_archive):
    output = ingest(sample_archive)
    run = Run.objects.get(run_id="run_crashed")
    assert run.status_at(timezone.now()) == "interrupted"
    assert (run.complete, run.outcome, run.next_seq) == (False, None, 14)
    # The unfinished last line is a write in progress: not imported, not malformed.
    assert not Diagnostic.objects.filter(run=run).exists()
    from runs.reduction import RunReduction

    died = RunReduction(run.run_id, run.reduction_state).died_mid_attempt()
    assert [(d.code, d.details["node"]) for d in died] == [("died_mid_attempt", "api-routes")]
    assert "run_crashed" in output and "interrupted" in output


def test_run_dirty_has_one_malformed_line_and_every_other_event(local_tenant, sample_archive):
    ingest(sample_archive)
    run = Run.objects.get(run_id="run_dirty")
    diagnostics = list(Diagnostic.objects.filter(run=run))
    assert [(d.code, d.severity, d.line) for d in diagnostics] == [("malformed_line", "error", 4)]
    assert "not JSON" in diagnostics[0].message
    lines = log_of(sample_archive, "run_dirty").read_text().splitlines()
    assert run.next_seq == len(lines) - 1 == 23
    assert stored_events("run_dirty")[3] == json.loads(lines[4])
    assert (run.outcome, run.errors) == ("clean", 1)


# ---------------------------------------------------------------- incremental and idempotent


def test_a_second_import_stores_nothing_new(local_tenant, sample_archive):
    ingest(sample_archive)
    before = (Event.objects.count(), Diagnostic.objects.count(), RunNode.objects.count())
    output = ingest(sample_archive)
    assert "nothing new" in output
    assert (Event.objects.count(), Diagnostic.objects.count(), RunNode.objects.count()) == before


def test_appended_lines_are_imported_and_only_they(local_tenant, tmp_path):
    root = tmp_path / "archive"
    run_live(root, "run_live", interval=0)
    log = log_of(root, "run_live")
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:10]))
    (root / "runs" / "run_live" / "summary.json").rename(tmp_path / "summary.json")
    ingest(root)
    run = Run.objects.get(run_id="run_live")
    assert (run.next_seq, run.complete) == (10, False)

    append(root, "run_live", "".join(lines[10:]))
    (tmp_path / "summary.json").rename(root / "runs" / "run_live" / "summary.json")
    output = ingest(root)
    run.refresh_from_db()
    assert run.next_seq == len(lines)
    assert [e["ts"] for e in stored_events("run_live")] == [json.loads(line)["ts"] for line in lines]
    assert list(Event.objects.filter(run=run).values_list("seq", flat=True).order_by("seq")) == list(
        range(len(lines))
    )
    assert run.complete and run.summary is not None
    assert not Diagnostic.objects.filter(run=run).exists()  # the late summary agrees with the reduction
    assert output.splitlines()[1].split()[:2] == ["run_live", str(len(lines) - 10)]


def test_finishing_an_unfinished_line_imports_it(local_tenant, sample_archive):
    ingest(sample_archive)
    append(
        sample_archive,
        "run_crashed",
        'tion","node":"api-routes","from":"running","to":"failed","attempt":1}\n',
    )
    ingest(sample_archive)
    run = Run.objects.get(run_id="run_crashed")
    assert run.next_seq == 15
    assert stored_events("run_crashed")[-1]["to"] == "failed"
    # The attempt ended with no node_attempt, and the log shows the run went on.
    assert Diagnostic.objects.get(run=run).code == "attempt_without_record"


def test_a_shrunken_log_is_reported_and_nothing_stored_is_removed(local_tenant, sample_archive):
    ingest(sample_archive)
    log = log_of(sample_archive, "run_flaky")
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:5]))
    ingest(sample_archive)
    ingest(sample_archive)
    run = Run.objects.get(run_id="run_flaky")
    assert run.next_seq == Event.objects.filter(run=run).count() == 35
    shrank = Diagnostic.objects.filter(run=run, code="log_shrank")
    assert shrank.count() == 1 and shrank.get().severity == "error"
    assert row_of(run) == RUN_FLAKY_ROW


def test_the_archive_is_never_written(local_tenant, sample_archive):
    def snapshot() -> dict:
        return {
            str(p.relative_to(sample_archive)): (
                hashlib.sha256(p.read_bytes()).hexdigest(),
                p.stat().st_mtime_ns,
            )
            for p in sorted(sample_archive.rglob("*"))
            if p.is_file()
        } | {str(p): p.stat().st_mtime_ns for p in sample_archive.rglob("*") if p.is_dir()}

    before = snapshot()
    ingest(sample_archive)
    ingest(sample_archive)
    assert snapshot() == before


# ---------------------------------------------------------------- bad input


def test_bad_lines_become_diagnostics_and_the_rest_is_imported(local_tenant, sample_archive):
    log = log_of(sample_archive, "run_clean")
    lines = log.read_text().splitlines(keepends=True)
    oversized = json.dumps({"ts": "2026-11-20T09:00:00.000Z", "event": "note", "text": "x" * MAX_EVENT_BYTES})
    bad = [
        "[1, 2]\n",
        '{"ts":"2026-11-20T09:00:00.000Z","event":"transition","node":"lint","from":"pending","to":"nap",'
        '"attempt":1}\n',
        oversized + "\n",
        '{"ts":"2026-11-20T09:00:00.000Z","event":"note","text":"a\\u0000b"}\n',
        "\n",
        b'{"ts":"2026-11-20T09:00:00.000Z","event":"note","text":"\xff"}\n'.decode("latin-1"),
        json.dumps(
            {
                "ts": "2026-11-20T09:00:00.000Z",
                "event": "node_attempt",
                "node": "n" * 300,
                "attempt": 1,
                "ok": True,
                "duration_s": 1,
                "exit_code": 0,
            }
        )
        + "\n",
    ]
    log.write_bytes("".join(lines[:3] + bad + lines[3:]).encode("latin-1"))
    ingest(sample_archive)
    run = Run.objects.get(run_id="run_clean")
    reasons = {d.line: d.details["reason"] for d in Diagnostic.objects.filter(run=run, code="malformed_line")}
    assert sorted(reasons) == [4, 5, 6, 7, 8, 9, 10]
    assert "object" in reasons[4]
    assert reasons[5].startswith("to:")
    assert str(MAX_EVENT_BYTES) in reasons[6]
    assert "NUL" in reasons[7]
    assert "not JSON" in reasons[8] and "not JSON" in reasons[9]
    assert reasons[10].startswith("node: must be a string of 1 to 200 characters")
    assert run.next_seq == len(lines)
    assert run.outcome == "clean"


def test_invalid_and_hidden_folders_and_symlinks_are_skipped_with_a_warning(
    local_tenant, sample_archive, tmp_path
):
    runs = sample_archive / "runs"
    (runs / ".hidden").mkdir()
    (runs / "bad name!").mkdir()
    outside = tmp_path / "outside"
    (outside / "runs" / "escaped").mkdir(parents=True)
    (runs / "linked").symlink_to(outside / "runs" / "escaped")
    err = StringIO()
    call_command("ingest_archive", str(sample_archive), stdout=StringIO(), stderr=err)
    warnings = err.getvalue()
    assert "runs/.hidden" in warnings and "runs/bad name!" in warnings and "runs/linked: symlinks" in warnings
    assert Run.objects.count() == 6


def test_a_path_that_is_not_an_archive_is_a_fatal_error(local_tenant, tmp_path):
    with pytest.raises(CommandError, match="no runs/ folder"):
        call_command("ingest_archive", str(tmp_path))


def test_an_unknown_tenant_is_a_fatal_error_naming_it(local_tenant, sample_archive):
    with pytest.raises(CommandError, match="'nope'"):
        call_command("ingest_archive", str(sample_archive), "--tenant", "nope")


def test_tenant_option_imports_into_that_tenant(local_tenant, sample_archive):
    other = Tenant.objects.create(slug="acme", name="Acme")
    ingest(sample_archive, "--tenant", "acme")
    ingest(sample_archive)
    with tenant_scope(other):
        other_counts = (Run.objects.count(), Event.objects.count())
    assert other_counts == (Run.objects.count(), Event.objects.count())
    assert other_counts[0] == 6


def test_summary_mismatch_names_the_fields(local_tenant, sample_archive):
    path = sample_archive / "runs" / "run_failed" / "summary.json"
    summary = json.loads(path.read_text())
    path.write_text(json.dumps(dict(summary, total_attempts=99, outcome="clean")))
    ingest(sample_archive)
    ingest(sample_archive)
    mismatch = Diagnostic.objects.get(run__run_id="run_failed", code="summary_mismatch")
    assert sorted(mismatch.details["fields"]) == ["outcome", "total_attempts"]
    assert Run.objects.get(run_id="run_failed").outcome == "failed"  # the row is always Scope's own


# ---------------------------------------------------------------- bulk, never per event


def test_import_cost_in_queries_does_not_grow_with_events(
    local_tenant, tmp_path, django_assert_max_num_queries
):
    root = tmp_path / "archive"
    archive_synthesize(root, runs=30, nodes=12)
    total_lines = sum(len(log_of(root, d.name).read_text().splitlines()) for d in (root / "runs").iterdir())
    assert total_lines > 30 * 20
    with django_assert_max_num_queries(20):
        ingest(root)
    assert Event.objects.count() == total_lines


# ---------------------------------------------------------------- the command as a process


@pytest.mark.django_db(transaction=True)
def test_follow_picks_up_appended_lines_and_new_runs_then_stops_on_ctrl_c(local_tenant, tmp_path):
    root = tmp_path / "archive"
    run_live(root, "run_live", interval=0)
    lines = log_of(root, "run_live").read_text().splitlines(keepends=True)
    log_of(root, "run_live").write_text("".join(lines[:3]))
    interval = 0.3
    follower = subprocess.Popen(
        [
            sys.executable,
            str(PROJECT / "manage.py"),
            "ingest_archive",
            str(root),
            "--follow",
            "--interval",
            str(interval),
        ],
        env=manage_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def stored(run_id: str) -> int:
            return Event.objects.filter(run__run_id=run_id).count()

        def wait_for(predicate, within: float) -> float:
            started = time.monotonic()
            while time.monotonic() - started < within:
                if predicate():
                    return time.monotonic() - started
                time.sleep(0.05)
            raise AssertionError(f"not within {within} s")

        wait_for(lambda: stored("run_live") == 3, within=30)  # start-up included
        append(root, "run_live", "".join(lines[3:8]))
        wait_for(lambda: stored("run_live") == 8, within=2 * interval + 0.5)
        run_live(root, "run_second", interval=0)
        wait_for(lambda: stored("run_second") > 0, within=2 * interval + 0.5)
    finally:
        follower.send_signal(signal.SIGINT)
        out, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err
    assert "stopped following" in out


@pytest.mark.django_db(transaction=True)
def test_an_unmigrated_database_fails_naming_migrate(tmp_path):
    env = manage_env(DATABASE_URL=f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    result = manage("ingest_archive", str(tmp_path), env=env)
    assert result.returncode != 0
    assert "manage.py migrate" in result.stderr


def test_cloud_mode_without_a_database_url_fails_naming_it():
    env = {k: v for k, v in manage_env().items() if k != "DATABASE_URL"}
    result = manage("check", env={**env, "KAHN_MODE": "cloud", "DJANGO_SECRET_KEY": "x" * 50})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("kahn: DATABASE_URL is not set")
    assert "Traceback" not in result.stderr


def test_the_demo_archive_shipped_with_the_project_is_the_sample(local_tenant):
    demo = PROJECT / "ingest" / "demo_archive"
    ingest(demo)
    assert Run.objects.count() == 6
    assert os.path.isdir(demo / "runs" / "run_flaky")
