"""A real `manage.py serve` in a subprocess, for the tests (`tests.conftest.scope_server`) and the
benchmarks alike. Needs no Django in this process: a benchmark prepares its database first, then
serves it."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

PROJECT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A loopback port free right now, for a server subprocess to listen on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerDidNotStart(Exception):
    """The server died or never answered; the message holds what it printed."""


@dataclass(frozen=True)
class Served:
    url: str
    log: IO[str]
    pid: int  # of `manage.py serve`: the server itself, or the parent of its gunicorn and daphne

    def output(self) -> str:
        """Everything the server has printed so far."""
        self.log.seek(0)
        return self.log.read()


@contextmanager
def served(
    env: dict[str, str], *args: str, port: int | None = None, ready_path: str = "/api/v1/schema/"
) -> Iterator[Served]:
    """`manage.py serve --port PORT *args` on loopback (a free port unless given) until the block
    ends, once it answers `ready_path` (any HTTP answer counts: a 401 or 404 is an answer)."""
    port = port or free_port()
    log = tempfile.NamedTemporaryFile("w+", prefix="kahn-serve-", suffix=".log")  # noqa: SIM115
    command = [sys.executable, str(PROJECT / "manage.py"), "serve", "--port", str(port), *args]
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    running = Served(url=f"http://127.0.0.1:{port}", log=log, pid=server.pid)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{running.url}{ready_path}", timeout=2):
                    break
            except urllib.error.HTTPError:
                break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                command_line = " ".join(["manage.py serve", *args])
                raise ServerDidNotStart(f"{command_line} did not start:\n{running.output()}")
            time.sleep(0.1)
        yield running
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
