"""What `ingest_archive` tells a person about an archive it cannot read as given (SPEC section 10):
each message through the command itself, naming what is wrong and what to give instead."""

import os
import shutil
import signal
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from ingest.archive import WarningsOnce, printable
from runs.models import Diagnostic, Event, Run
from tests.conftest import PROJECT, manage, manage_env, write_archive_run

pytestmark = pytest.mark.django_db

DEMO_ARCHIVE = PROJECT / "ingest" / "demo_archive"


def ingest(root: Path | str, *args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("ingest_archive", str(root), *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """A writable copy of the project's own sample archive."""
    root = tmp_path / "archive"
    shutil.copytree(DEMO_ARCHIVE, root)
    return root


def events_of(run_id: str, *, named: str | None = None) -> list[dict]:
    start = {"ts": "2026-11-20T10:00:00.000Z", "event": "run_start", "run_id": named or run_id}
    return [start, {"ts": "2026-11-20T10:00:01.000Z", "event": "run_end", "exit_code": 0}]


# ---------------------------------------------------------------- a path that is not an archive root


def test_a_path_that_does_not_exist_says_so(local_tenant, tmp_path):
    missing = tmp_path / "no-such-archive"
    with pytest.raises(CommandError) as raised:
        ingest(missing)
    assert str(raised.value) == f"{missing} does not exist"


def test_the_default_archive_that_does_not_exist_names_the_setting(local_tenant, tmp_path):
    missing = tmp_path / "nowhere"
    result = manage("ingest_archive", env=manage_env(KAHN_ARCHIVE=str(missing)))
    assert result.returncode == 1
    assert f"{missing} does not exist" in result.stderr and "KAHN_ARCHIVE" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_file_in_place_of_the_archive_says_it_is_not_a_folder(local_tenant, tmp_path):
    file = tmp_path / "archive.tar"
    file.write_bytes(b"")
    with pytest.raises(CommandError, match="is not a folder: give the archive root"):
        ingest(file)


def test_a_run_folder_given_as_the_archive_suggests_the_archive_that_holds_it(local_tenant, archive):
    with pytest.raises(CommandError) as raised:
        ingest(archive / "runs" / "run_clean")
    assert str(raised.value) == (
        f"{archive / 'runs' / 'run_clean'} is one run's folder, not an archive root: "
        f"give the archive that holds it, {archive}"
    )


def test_a_relative_run_folder_suggests_its_archive_as_an_absolute_path(local_tenant, archive, monkeypatch):
    monkeypatch.chdir(archive / "runs" / "run_clean")
    with pytest.raises(CommandError, match=f"give the archive that holds it, {archive}$"):
        ingest(".")


def test_the_runs_folder_given_as_the_archive_suggests_its_parent(local_tenant, archive):
    with pytest.raises(CommandError) as raised:
        ingest(archive / "runs")
    assert str(raised.value).endswith(
        f"is the runs/ folder of an archive: give the archive root, its parent {archive}"
    )


def test_a_folder_without_runs_says_what_an_archive_holds(local_tenant, tmp_path):
    with pytest.raises(CommandError, match=r"has no runs/ folder \(an archive root holds runs/<run_id>/"):
        ingest(tmp_path)


def test_a_wrong_path_exits_1_with_one_sentence_and_no_traceback(local_tenant, archive):
    result = manage("ingest_archive", str(archive / "runs" / "run_flaky"))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"CommandError: {archive / 'runs' / 'run_flaky'} is one run's folder, not an archive root: "
        f"give the archive that holds it, {archive}"
    )


# ---------------------------------------------------------------- run folders that cannot be read as given


def test_a_run_folder_without_a_log_is_warned_about_by_name(local_tenant, archive):
    (archive / "runs" / "run_empty").mkdir()
    _, err = ingest(archive)
    assert "warning: runs/run_empty has no transitions.jsonl yet" in err
    assert Run.objects.count() == 6


def test_a_fifo_in_place_of_the_log_is_warned_about_and_never_opened(local_tenant, archive):
    folder = archive / "runs" / "run_piped"
    folder.mkdir()
    os.mkfifo(folder / "transitions.jsonl")
    os.mkfifo(folder / "graph.json")
    # Opening a FIFO waits for a writer: the import would hang here if it opened one.
    _, err = ingest(archive)
    assert "warning: skipped runs/run_piped/transitions.jsonl: it is a FIFO, not a regular file" in err
    assert "warning: skipped runs/run_piped/graph.json: it is a FIFO, not a regular file" in err
    assert not Run.objects.filter(run_id="run_piped").exists()
    assert Run.objects.count() == 6


def test_a_folder_in_place_of_the_log_is_warned_about(local_tenant, archive):
    folder = archive / "runs" / "run_folded"
    (folder / "transitions.jsonl").mkdir(parents=True)
    (folder / "summary.json").mkdir()
    _, err = ingest(archive)
    assert "warning: skipped runs/run_folded/transitions.jsonl: it is a folder, not a regular file" in err
    assert "warning: skipped runs/run_folded/summary.json: it is a folder, not a regular file" in err
    assert Run.objects.count() == 6


def test_a_file_among_the_run_folders_is_warned_about(local_tenant, archive):
    (archive / "runs" / "notes.txt").write_text("not a run")
    _, err = ingest(archive)
    assert "warning: skipped runs/notes.txt: not a folder (each run is a folder runs/<run_id>/)" in err


def test_an_invalid_name_says_what_a_run_id_may_contain(local_tenant, archive):
    (archive / "runs" / "run.with.dots").mkdir()
    (archive / "runs" / ("r" * 65)).mkdir()
    _, err = ingest(archive)
    rule = "a run id is 1 to 64 letters, digits, '_' or '-', beginning with a letter or a digit"
    assert f"warning: skipped runs/run.with.dots: not a valid run id ({rule})" in err
    assert f"warning: skipped runs/{'r' * 65}: not a valid run id ({rule})" in err


def test_names_and_paths_are_printed_with_control_characters_escaped(local_tenant, archive, tmp_path):
    runs = archive / "runs"
    (runs / "evil\nwarning: all good\r\x1b[2J").mkdir()
    (runs / os.fsdecode(b"latin-\xe9")).mkdir()
    (runs / "bidi\u202eexe.txt").mkdir()
    out, err = ingest(archive)
    lines = err.splitlines()
    assert any(
        line.startswith("warning: skipped runs/evil\\x0awarning: all good\\x0d\\x1b[2J: not a valid run id")
        for line in lines
    )
    assert any(line.startswith("warning: skipped runs/latin-\\xe9: not a valid run id") for line in lines)
    assert any(
        line.startswith("warning: skipped runs/bidi\\u202eexe.txt: not a valid run id") for line in lines
    )
    assert all(line.startswith("warning: ") for line in lines)
    assert "\x1b" not in out + err and "\r" not in out + err

    missing = tmp_path / "gone\x1b[31m\nred"
    with pytest.raises(CommandError) as raised:
        ingest(missing)
    assert str(raised.value) == f"{tmp_path}/gone\\x1b[31m\\x0ared does not exist"


def test_printable_keeps_what_a_terminal_shows_and_escapes_the_rest():
    assert printable("run_clean") == "run_clean"
    assert printable("café ✓ 🚀") == "café ✓ 🚀"
    assert printable("a\tb\x00c\x7fd\x85e") == "a\\x09b\\x00c\\x7fd\\x85e"
    assert printable("line\u2028sep\u200bzw") == "line\\u2028sep\\u200bzw"
    assert printable(Path(os.fsdecode(b"/tmp/\xff"))) == "/tmp/\\xff"


# ---------------------------------------------------------------- a folder and a log that disagree


def test_run_start_naming_another_run_is_a_run_id_mismatch_warning(local_tenant, tmp_path):
    root = tmp_path / "archive"
    write_archive_run(root, "run_copied", events_of("run_copied", named="run_original"))
    ingest(root)
    run = Run.objects.get(run_id="run_copied")
    mismatch = Diagnostic.objects.get(run=run)
    assert (mismatch.code, mismatch.severity, mismatch.seq, mismatch.line) == (
        "run_id_mismatch",
        "warning",
        0,
        1,
    )
    assert mismatch.details == {"run_id": "run_original", "folder": "run_copied"}
    assert "run_start names run 'run_original'" in mismatch.message
    assert (run.warnings, run.next_seq, run.outcome) == (1, 2, "clean")  # the run is imported all the same
    assert Event.objects.get(run=run, seq=0).payload["run_id"] == "run_original"  # stored as written


def test_a_matching_run_start_gives_no_mismatch(local_tenant, tmp_path):
    root = tmp_path / "archive"
    write_archive_run(root, "run_same", events_of("run_same"))
    ingest(root)
    assert not Diagnostic.objects.filter(code="run_id_mismatch").exists()


# ---------------------------------------------------------------- following: a warning once, not every poll


def test_warnings_once_gives_a_standing_warning_once_and_a_returning_one_again():
    once = WarningsOnce()
    assert once.fresh(["a", "b"]) == ["a", "b"]
    assert once.fresh(["a", "b"]) == []
    assert once.fresh(["b", "c"]) == ["c"]
    assert once.fresh(["b"]) == []
    assert once.fresh(["b", "a", "a"]) == ["a"]


@pytest.mark.django_db(transaction=True)
def test_follow_prints_a_standing_problem_once_and_a_new_one_when_it_appears(local_tenant, tmp_path):
    root = tmp_path / "archive"
    write_archive_run(root, "run_ok", events_of("run_ok"))
    (root / "runs" / "bad name").mkdir()
    os.mkfifo(root / "runs" / "run_ok" / "summary.json")
    follower = subprocess.Popen(
        [
            sys.executable,
            str(PROJECT / "manage.py"),
            "ingest_archive",
            str(root),
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
        while not Run.objects.filter(run_id="run_ok").exists():
            assert time.monotonic() < deadline, "the follower imported nothing"
            time.sleep(0.1)
        (root / "runs" / "run.late").mkdir()
        write_archive_run(root, "run_later", events_of("run_later"))
        while not Run.objects.filter(run_id="run_later").exists():
            assert time.monotonic() < deadline, "the follower did not import the new run"
            time.sleep(0.1)
        # A further run is imported only after polls that saw both standing problems again.
        write_archive_run(root, "run_last", events_of("run_last"))
        while not Run.objects.filter(run_id="run_last").exists():
            assert time.monotonic() < deadline, "the follower did not import the last run"
            time.sleep(0.1)
    finally:
        follower.send_signal(signal.SIGINT)
        out, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len([w for w in warnings if w.startswith("warning: skipped runs/bad name:")]) == 1
    assert len([w for w in warnings if "runs/run_ok/summary.json: it is a FIFO" in w]) == 1
    assert len([w for w in warnings if w.startswith("warning: skipped runs/run.late:")]) == 1
    assert len(warnings) == 3, err
    assert "run_later" in out and "run_last" in out  # the table named the new runs


def test_a_mismatched_run_id_is_shown_escaped_and_kept_as_written(local_tenant, tmp_path):
    root = tmp_path / "archive"
    write_archive_run(root, "run_folder", events_of("run_folder", named="evil\n\x1b[1mname"))
    ingest(root)
    mismatch = Diagnostic.objects.get(code="run_id_mismatch")
    assert mismatch.message.startswith("run_start names run 'evil\\x0a\\x1b[1mname', but its folder is")
    assert mismatch.details["run_id"] == "evil\n\x1b[1mname"


def test_an_unknown_tenant_is_named_escaped(local_tenant, archive):
    with pytest.raises(CommandError, match=r"^there is no tenant 'no\\x0a\\x1bpe': create it"):
        ingest(archive, "--tenant", "no\n\x1bpe")
