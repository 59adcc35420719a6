"""What `manage.py serve` and `make run` say, as an operator sees it in a terminal: a port in use is
one sentence and a failing exit before anything claims to serve; a followed archive that does not
exist is said once, with the setting to change; following is silent unless runs changed, and then
names them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import PROJECT, manage, manage_env, write_archive_run
from tests.servers import Served, free_port, served
from tests.tenants.conftest import POSTGRES_ONLY, cloud_server_env
from tests.tenants.conftest import service_role as service_role  # the fixture, for this directory

T = "2026-11-20T10:00:00.000Z"
EVENTS = [
    {"ts": T, "event": "run_start", "run_id": "run_late"},
    {"ts": T, "event": "transition", "node": "build", "from": "pending", "to": "running", "attempt": 1},
    {
        "ts": T,
        "event": "node_attempt",
        "node": "build",
        "attempt": 1,
        "ok": True,
        "duration_s": 1.0,
        "exit_code": 0,
    },
]
INTERVAL = 0.1


@contextmanager
def port_taken() -> Iterator[int]:
    """A loopback port another program listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


def appended(path: Path, event: dict) -> None:
    with path.open("a") as log:
        log.write(json.dumps(event, separators=(",", ":")) + "\n")


def wait_for(server: Served, text: str) -> str:
    """The server's output once it holds `text`; the test fails with that output if it never does."""
    deadline = time.monotonic() + 60
    while text not in (output := server.output()):
        if time.monotonic() > deadline:
            pytest.fail(f"serve never said {text!r}; it said:\n{output}")
        time.sleep(INTERVAL)
    return output


# ---------------------------------------------------------------- a port in use


@pytest.mark.database_agnostic
@pytest.mark.django_db
def test_a_port_in_use_is_one_sentence_and_a_failing_exit_before_anything_claims_to_serve(tmp_path):
    with port_taken() as port:
        finished = manage("serve", "--port", str(port), env=manage_env(KAHN_ARCHIVE=str(tmp_path)))
    assert finished.returncode != 0
    assert finished.stderr.strip().splitlines() == [
        f"CommandError: port {port} on 127.0.0.1 is already in use by another program (perhaps another "
        "KAHN Scope): stop it, or serve on another port with --port N (with make: make run PORT=N)."
    ]
    # Nothing claimed to serve, and the archive was not followed.
    assert finished.stdout == ""


@POSTGRES_ONLY[0]
@POSTGRES_ONLY[1]
@pytest.mark.django_db
@pytest.mark.parametrize(
    ("workers", "taken", "option"),
    [(False, "port", "--port"), (True, "port", "--port"), (True, "ws_port", "--ws-port")],
    ids=["daphne", "http-workers", "http-workers-websocket"],
)
def test_cloud_says_so_too_with_or_without_http_workers(service_role, workers, taken, option):
    with port_taken() as busy:
        ports = {"port": free_port(), "ws_port": free_port(), taken: busy}
        args = ["serve", "--host", "127.0.0.1", "--port", str(ports["port"])]
        if workers:
            args += ["--http-workers", "2", "--ws-port", str(ports["ws_port"])]
        finished = manage(*args, env=cloud_server_env(service_role))
    assert finished.returncode != 0
    assert finished.stderr.strip().splitlines() == [
        f"CommandError: port {busy} on 127.0.0.1 is already in use by another program (perhaps another "
        f"KAHN Scope): stop it, or serve on another port with {option} N"
        + (" (with make: make run PORT=N)." if option == "--port" else ".")
    ]
    assert finished.stdout == ""


# ---------------------------------------------------------------- following the archive


@pytest.mark.database_agnostic
def test_a_missing_archive_is_said_once_and_following_names_only_the_runs_that_changed(
    transactional_db, local_tenant, tmp_path
):
    archive = tmp_path / "producer" / ".kahn" / "archive"
    env = manage_env(KAHN_ARCHIVE=str(archive))
    with served(env, "--follow-interval", str(INTERVAL)) as server:
        wait_for(server, "KAHN_ARCHIVE=")
        time.sleep(20 * INTERVAL)  # many passes over the missing archive
        write_archive_run(archive, "run_late", EVENTS[:2])
        wait_for(server, "run_late +2")
        time.sleep(20 * INTERVAL)  # many passes that find nothing new
        appended(archive / "runs" / "run_late" / "transitions.jsonl", EVENTS[2])
        output = wait_for(server, "run_late +1")
    lines = output.splitlines()
    missing = (
        f"the archive {archive} does not exist yet: its runs appear here once a producer writes there. "
        "To follow another archive, set KAHN_ARCHIVE=path/to/.kahn/archive "
        "(with make: make run ARCHIVE=path/to/.kahn/archive)."
    )
    assert lines.count(missing) == 1, output
    assert lines == [
        f"KAHN Scope (oss) on {server.url}/  (--port to change; Ctrl-C stops it)",
        f"following the archive {archive} (KAHN_ARCHIVE) every {INTERVAL:g} s; --no-follow turns it off",
        missing,
        f"the archive {archive} can be read now: following it",
        "imported 2 events into 1 run: run_late +2",
        "imported 1 event into 1 run: run_late +1",
    ], output


@pytest.mark.database_agnostic
def test_a_folder_that_is_not_an_archive_yet_is_said_once_too(transactional_db, local_tenant, tmp_path):
    with served(manage_env(KAHN_ARCHIVE=str(tmp_path)), "--follow-interval", str(INTERVAL)) as server:
        wait_for(server, "KAHN_ARCHIVE=")
        time.sleep(20 * INTERVAL)  # many passes over the same folder
        write_archive_run(tmp_path, "run_late", EVENTS[:1])
        output = wait_for(server, "run_late +1")
    said = [line for line in output.splitlines() if "KAHN_ARCHIVE=" in line]
    assert len(said) == 1, output
    assert "waiting for a producer to write there" in said[0]


@pytest.mark.database_agnostic
def test_a_first_pass_over_many_runs_names_ten_and_counts_the_rest(transactional_db, local_tenant, tmp_path):
    archive = tmp_path / "archive"
    for number in range(12):
        run_id = f"run_{number:02}"
        write_archive_run(archive, run_id, [dict(EVENTS[0], run_id=run_id)])
    with served(manage_env(KAHN_ARCHIVE=str(archive)), "--follow-interval", str(INTERVAL)) as server:
        output = wait_for(server, "imported")
    named = ", ".join(f"run_{number:02} +1" for number in range(10))
    assert f"imported 12 events into 12 runs: {named}, and 2 more" in output.splitlines()


# ---------------------------------------------------------------- make run


@pytest.mark.database_agnostic
def test_make_run_serves_on_port_and_follows_archive(transactional_db, local_tenant, tmp_path):
    archive = tmp_path / "my archive"
    write_archive_run(archive, "run_late", EVENTS)
    port = free_port()
    log = tmp_path / "make-run.log"
    venv = Path(sys.executable).parents[1]
    command = [
        "make",
        "--no-print-directory",
        # This suite's own interpreter, already installed: `make run` would otherwise install first.
        "-o",
        f"{venv}/.installed",
        f"VENV={venv}",
        "run",
        f"PORT={port}",
        f"ARCHIVE={archive}",
    ]
    with log.open("w") as out:
        make = subprocess.Popen(
            command,
            cwd=PROJECT,
            env=manage_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        server = Served(url=f"http://127.0.0.1:{port}", log=log.open(), pid=make.pid)
        output = wait_for(server, "run_late +3")
        with urllib.request.urlopen(f"{server.url}/api/v1/runs/", timeout=10) as response:
            rows = json.loads(response.read())["results"]
    finally:
        os.killpg(make.pid, signal.SIGTERM)
        make.wait(timeout=30)
    assert [row["run_id"] for row in rows] == ["run_late"]
    assert (
        f"make run: KAHN Scope in OSS mode on http://127.0.0.1:{port}/, following the archive {archive}"
        in output
    )
    assert "make run PORT=8090 ARCHIVE=path/to/.kahn/archive" in output
    assert f"KAHN Scope (oss) on http://127.0.0.1:{port}/" in output
