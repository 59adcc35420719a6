"""One run the database refuses costs that run alone (SPEC section 2, Bounds): it is rolled back,
recorded on the run with the error its page shows, and tried again later; every other run of the
archive is imported, and `ingest_archive` exits 0 naming it.

The refusal is a real one: a trigger the test installs in the database refuses the rows of one
node name, whatever the validation lets through.
"""

import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from ingest import archive as archive_module
from ingest.archive import archive_import
from runs.models import Diagnostic, Event, Run
from runs.services import IMPORT_RETRY_FIRST
from tests.conftest import PROJECT, manage, manage_env, other_connections_to_test_database, write_archive_run
from tests.servers import served

pytestmark = pytest.mark.django_db

DEMO_ARCHIVE = PROJECT / "ingest" / "demo_archive"
REFUSED_NODE = "refused-by-the-database"
REFUSAL = "refused by a trigger of the test"


@contextmanager
def database_refuses_events_of_node(node: str) -> Iterator[None]:
    """Makes the database itself refuse any event row naming `node`, as a column's range or an
    operator's constraint would: the import learns of it only when it writes."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "CREATE FUNCTION kahn_test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.payload ->> 'node' = '{node}' THEN RAISE EXCEPTION '{REFUSAL}'; END IF; "
                "RETURN NEW; END $$"
            )
            cursor.execute(
                "CREATE TRIGGER kahn_test_refuse BEFORE INSERT ON runs_event "
                "FOR EACH ROW EXECUTE FUNCTION kahn_test_refuse()"
            )
        else:
            cursor.execute(
                "CREATE TRIGGER kahn_test_refuse BEFORE INSERT ON runs_event "
                f"WHEN json_extract(NEW.payload, '$.node') = '{node}' "
                f"BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END"
            )
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(
                "DROP TRIGGER kahn_test_refuse"
                + (" ON runs_event" if connection.vendor == "postgresql" else "")
            )
            if connection.vendor == "postgresql":
                cursor.execute("DROP FUNCTION kahn_test_refuse()")


def ingest(root: Path) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("ingest_archive", str(root), stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def run_events(run_id: str, nodes: list[str], extra: int = 0) -> list[dict]:
    """A complete run: each node runs once and is done; `extra` unknown events pad its log."""
    ts = "2026-11-20T10:00:00.000Z"
    events: list[dict] = [{"ts": ts, "event": "run_start", "run_id": run_id}]
    for node in nodes:
        events.append(
            {"ts": ts, "event": "transition", "node": node, "from": "pending", "to": "running", "attempt": 1}
        )
        events.append(
            {
                "ts": ts,
                "event": "node_attempt",
                "node": node,
                "attempt": 1,
                "ok": True,
                "duration_s": 1.0,
                "exit_code": 0,
            }
        )
        events.append(
            {"ts": ts, "event": "transition", "node": node, "from": "running", "to": "done", "attempt": 1}
        )
    events.extend({"ts": ts, "event": "heartbeat", "n": i} for i in range(extra))
    events.append({"ts": ts, "event": "run_end", "exit_code": 0})
    return events


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """The project's sample archive, with `run_hostile` among its runs (by name, in the middle)."""
    root = tmp_path / "archive"
    shutil.copytree(DEMO_ARCHIVE, root)
    write_archive_run(root, "run_hostile", run_events("run_hostile", ["build", REFUSED_NODE, "test"]))
    return root


def lines_of(root: Path, run_id: str) -> int:
    return len((root / "runs" / run_id / "transitions.jsonl").read_text().splitlines())


def assert_imported_whole(root: Path, run_id: str) -> None:
    """Every complete line of the run is an event or a malformed_line diagnostic, and no more."""
    run = Run.objects.get(run_id=run_id)
    malformed = Diagnostic.objects.filter(run=run, code="malformed_line").count()
    complete_lines = (root / "runs" / run_id / "transitions.jsonl").read_bytes().count(b"\n")
    assert run.next_seq + malformed == complete_lines == run.log_lines, run_id
    assert Event.objects.filter(run=run).count() == run.next_seq
    assert run.import_error == ""


def other_runs(root: Path, *hostile: str) -> list[str]:
    return sorted(p.name for p in (root / "runs").iterdir() if p.name not in hostile)


# ---------------------------------------------------------------- one import


@pytest.mark.parametrize("padding", [0, 1500], ids=["one-statement-insert", "copy"])
def test_a_run_the_database_refuses_is_rolled_back_alone(local_tenant, archive, padding):
    # With padding, the chunk's events outgrow one INSERT and stream through COPY, which the
    # refusal breaks in the middle of other runs' rows.
    write_archive_run(archive, "run_padded", run_events("run_padded", ["a"], extra=padding))
    with database_refuses_events_of_node(REFUSED_NODE):
        out, err = ingest(archive)
    for run_id in other_runs(archive, "run_hostile"):
        assert_imported_whole(archive, run_id)
    hostile = Run.objects.get(run_id="run_hostile")
    assert REFUSAL in hostile.import_error
    assert (hostile.next_seq, hostile.log_offset, hostile.import_failures) == (0, 0, 1)
    assert not Event.objects.filter(run=hostile).exists()
    assert hostile.import_retry_at > timezone.now()
    assert (
        f"warning: could not import runs/run_hostile: {hostile.import_error}. Nothing new of this run" in err
    )
    assert (
        "could not import 1 run: run_hostile (the warnings above say why; every other run was imported)"
        in out
    )
    assert f"imported {Event.objects.count()} events into 7 runs (8 in the archive)" in out


def test_lines_appended_that_the_database_refuses_keep_what_the_run_had(local_tenant, tmp_path):
    root = tmp_path / "archive"
    events = run_events("run_growing", ["build", REFUSED_NODE])
    write_archive_run(root, "run_growing", events[:2])
    write_archive_run(root, "run_beside", run_events("run_beside", ["x"]))
    ingest(root)
    before = Run.objects.get(run_id="run_growing")
    assert before.next_seq == 2
    write_archive_run(root, "run_growing", events)
    write_archive_run(root, "run_new", run_events("run_new", ["y"]))
    with database_refuses_events_of_node(REFUSED_NODE):
        out, _ = ingest(root)
    after = Run.objects.get(run_id="run_growing")
    assert (after.next_seq, after.log_offset, after.log_lines) == (2, before.log_offset, 2)
    assert REFUSAL in after.import_error
    assert_imported_whole(root, "run_new")
    assert "could not import 1 run: run_growing" in out


def test_the_run_is_imported_once_the_database_takes_it_and_its_error_is_cleared(local_tenant, archive):
    with database_refuses_events_of_node(REFUSED_NODE):
        ingest(archive)
    events_before = Event.objects.count()
    out, err = ingest(archive)  # by hand: tried again at once, whatever its retry time
    assert_imported_whole(archive, "run_hostile")
    run = Run.objects.get(run_id="run_hostile")
    assert (run.import_error, run.import_failures, run.import_retry_at, run.outcome) == ("", 0, None, "clean")
    assert Event.objects.count() == events_before + run.next_seq  # the others gained nothing
    assert "could not import" not in out + err


def test_importing_by_hand_again_tries_the_run_again_and_counts_its_failures(local_tenant, archive):
    with database_refuses_events_of_node(REFUSED_NODE):
        ingest(archive)
        stored = Event.objects.count()
        out, _ = ingest(archive)
    run = Run.objects.get(run_id="run_hostile")
    assert run.import_failures == 2
    assert Event.objects.count() == stored  # nothing else was new, nothing of it was stored
    assert "could not import 1 run: run_hostile" in out


def test_a_followed_archive_waits_out_the_retry_delay_which_doubles(local_tenant, archive):
    with database_refuses_events_of_node(REFUSED_NODE):
        first = archive_import(tenant=local_tenant, root=archive)
        run = Run.objects.get(run_id="run_hostile")
        assert (run.import_failures, first.failed) == (1, ["run_hostile"])
        delay = run.import_retry_at - timezone.now()
        assert timedelta(0) < delay <= IMPORT_RETRY_FIRST

        # The next polls leave it alone, and say the same words (printed once, see WarningsOnce).
        for _ in range(3):
            waiting = archive_import(tenant=local_tenant, root=archive)
            assert waiting.failed == ["run_hostile"] and not waiting.runs
            assert [w for w in waiting.warnings if "run_hostile" in w] == [
                w for w in first.warnings if "run_hostile" in w
            ]
        assert Run.objects.get(run_id="run_hostile").import_failures == 1

        # Its time come, it is tried again, and waits twice as long after a second failure.
        Run.objects.filter(run_id="run_hostile").update(import_retry_at=timezone.now() - timedelta(seconds=1))
        archive_import(tenant=local_tenant, root=archive)
        run = Run.objects.get(run_id="run_hostile")
        assert run.import_failures == 2
        assert IMPORT_RETRY_FIRST < run.import_retry_at - timezone.now() <= 2 * IMPORT_RETRY_FIRST

    Run.objects.filter(run_id="run_hostile").update(import_retry_at=timezone.now() - timedelta(seconds=1))
    archive_import(tenant=local_tenant, root=archive)
    assert_imported_whole(archive, "run_hostile")


# ---------------------------------------------------------------- what a person sees


def test_the_run_page_shows_the_import_error_and_the_pages_still_answer(local_tenant, archive, client):
    with database_refuses_events_of_node(REFUSED_NODE):
        ingest(archive)
    page = client.get("/runs/run_hostile/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="import-error"' in html and REFUSAL in html
    assert "since it appeared" in html
    for path in ("/", "/nodes/", "/api/v1/runs/", "/api/v1/runs/run_hostile/", "/runs/run_clean/"):
        assert client.get(path).status_code == 200, path
    assert 'id="import-error"' not in client.get("/runs/run_clean/").content.decode()


def test_the_run_page_of_a_run_that_failed_on_appended_lines_shows_what_it_had(
    local_tenant, tmp_path, client
):
    root = tmp_path / "archive"
    events = run_events("run_growing", ["build", REFUSED_NODE])
    write_archive_run(root, "run_growing", events[:4])
    ingest(root)
    write_archive_run(root, "run_growing", events)
    with database_refuses_events_of_node(REFUSED_NODE):
        ingest(root)
    html = client.get("/runs/run_growing/").content.decode()
    assert "since its last import" in html and REFUSAL in html
    assert 'id="fact-events">4<' in html


# ---------------------------------------------------------------- the command as a process


@pytest.fixture
def committed_refusal(transactional_db) -> Iterator[None]:
    """The trigger, committed, for a command running in another process."""
    with database_refuses_events_of_node(REFUSED_NODE):
        yield


@pytest.mark.django_db(transaction=True)
def test_the_command_exits_0_naming_the_run_it_could_not_import(local_tenant, archive, committed_refusal):
    result = manage("ingest_archive", str(archive))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "could not import 1 run: run_hostile" in result.stdout
    assert "warning: could not import runs/run_hostile: " in result.stderr
    for run_id in other_runs(archive, "run_hostile"):
        assert_imported_whole(archive, run_id)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_chunks_imported_two_at_a_time_each_lose_only_the_run_refused(
    local_tenant, archive, committed_refusal, monkeypatch
):
    # PostgreSQL imports two chunks at once, each on its own connection (ingest.archive.
    # _import_chunks); two runs a chunk make the demo archive four chunks, one of them refused.
    if connection.vendor != "postgresql":
        pytest.skip("chunks go one at a time on SQLite")
    monkeypatch.setattr(archive_module, "CHUNK_RUNS", 2)
    threads: set[str] = set()
    import_chunk = archive_module._import_chunk

    def import_chunk_seen(*args, **kwargs):
        threads.add(threading.current_thread().name)
        return import_chunk(*args, **kwargs)

    monkeypatch.setattr(archive_module, "_import_chunk", import_chunk_seen)
    out, err = ingest(archive)
    assert len(threads) == 2 and threading.current_thread().name not in threads, threads
    for run_id in other_runs(archive, "run_hostile"):
        assert_imported_whole(archive, run_id)
    hostile = Run.objects.get(run_id="run_hostile")
    assert REFUSAL in hostile.import_error
    assert not Event.objects.filter(run=hostile).exists()
    assert "warning: could not import runs/run_hostile: " in err
    assert f"imported {Event.objects.count()} events into 6 runs (7 in the archive)" in out
    # The table lists the runs in the archive's order, whichever chunk committed first.
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("run_")]
    assert listed == other_runs(archive, "run_hostile"), out
    # Every connection a chunk opened was closed with it.
    assert other_connections_to_test_database() == 0


@pytest.mark.django_db(transaction=True)
def test_following_tries_a_refused_run_again_with_backoff_not_at_every_poll(
    local_tenant, archive, committed_refusal
):
    follower = subprocess.Popen(
        [
            sys.executable,
            str(PROJECT / "manage.py"),
            "ingest_archive",
            str(archive),
            "--follow",
            "--interval",
            "0.1",
        ],
        env=manage_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not Run.objects.filter(run_id="run_hostile", import_failures__gt=0).exists():
            assert time.monotonic() < deadline, "the follower did not try the run"
            time.sleep(0.1)
        # Polls go on beside it: a new run is imported while the refused one waits.
        write_archive_run(archive, "run_later", run_events("run_later", ["z"]))
        while not Run.objects.filter(run_id="run_later").exists():
            assert time.monotonic() < deadline, "the follower stopped importing"
            time.sleep(0.1)
        time.sleep(1)  # ten more polls at least
    finally:
        follower.send_signal(signal.SIGINT)
        _out, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err
    assert Run.objects.get(run_id="run_hostile").import_failures == 1
    assert err.count("could not import runs/run_hostile") == 1, err
    assert_imported_whole(archive, "run_later")


def test_no_database_is_fatal_in_one_sentence(tmp_path):
    (tmp_path / "runs").mkdir()
    # Nothing listens on port 1: the server is down, or the URL wrong.
    result = manage(
        "ingest_archive", str(tmp_path), env=manage_env(DATABASE_URL="postgres://postgres@127.0.0.1:1/x")
    )
    assert result.returncode == 1
    assert result.stderr.startswith("CommandError: the database cannot be reached: "), result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------- issue 14's examples, by name
#
# Lines the schema once let through but a database could not store. Whether the validation now
# refuses them (a malformed_line) or the database does (the run fails alone), the import goes on:
# exit 0, every other run whole, and the line is never half-stored.

HOSTILE_LINES = {
    "attempt_of_2_pow_63_minus_1": {
        "ts": "2026-11-20T10:00:00.000Z",
        "event": "transition",
        "node": "huge",
        "from": "pending",
        "to": "running",
        "attempt": 2**63 - 1,
    },
    "node_that_is_an_object_on_an_unknown_kind": {
        "ts": "2026-11-20T10:00:00.000Z",
        "event": "custom_kind",
        "node": {"id": "x", "nested": [1, 2]},
    },
    "ts_in_year_0_after_its_offset": {"ts": "0001-01-01T00:30:00.000+01:00", "event": "heartbeat"},
}


@pytest.mark.parametrize("name", HOSTILE_LINES)
def test_issue_14_a_line_the_database_cannot_store_costs_its_run_at_most(local_tenant, archive, name):
    events = run_events("run_example", ["a", "b"])
    events.insert(2, HOSTILE_LINES[name])
    write_archive_run(archive, "run_example", events)
    shutil.rmtree(archive / "runs" / "run_hostile")
    out, err = ingest(archive)  # raises on a fatal error (exit 1); a refused run is not one
    assert "Traceback" not in out + err
    for run_id in other_runs(archive, "run_example"):
        assert_imported_whole(archive, run_id)
    run = Run.objects.get(run_id="run_example")
    if run.import_error:
        assert "could not import 1 run: run_example" in out
        assert run.next_seq == 0 and not Event.objects.filter(run=run).exists()
    else:
        assert_imported_whole(archive, "run_example")
    out_again, _ = ingest(archive)
    if not run.import_error:
        assert "nothing new" in out_again


@pytest.mark.django_db(transaction=True)
def test_issue_14_serve_does_not_retry_a_refused_run_every_second(local_tenant, archive, committed_refusal):
    """`serve` follows the archive in its own process: the refused run is tried once, then waits out
    its delay, while the server answers and shows the other runs and the refused one's error."""
    env = manage_env(KAHN_ARCHIVE=str(archive), KAHN_MODE="oss")
    with served(env, "--follow-interval", "0.1") as server:
        deadline = time.monotonic() + 60
        while not Run.objects.filter(run_id="run_hostile", import_failures__gt=0).exists():
            assert time.monotonic() < deadline, f"serve did not try the run:\n{server.output()}"
            time.sleep(0.1)
        time.sleep(1.5)  # fifteen polls at least
        with urllib.request.urlopen(f"{server.url}/runs/run_hostile/", timeout=10) as page:
            assert REFUSAL in page.read().decode()
        output = server.output()
    assert Run.objects.get(run_id="run_hostile").import_failures == 1
    assert output.count("could not import runs/run_hostile") == 1, output
    for run_id in other_runs(archive, "run_hostile"):
        assert_imported_whole(archive, run_id)
