"""A real `manage.py serve` in a subprocess, for the tests (`tests.conftest.scope_server`) and the
benchmarks alike, and real Celery workers. Needs no Django in this process: a benchmark prepares its
database first, then serves it."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import redis
from celery import Celery

PROJECT = Path(__file__).resolve().parents[1]
# Seconds a worker may take to start, or a task to finish: a limit against hanging, never a measure.
TASK_TIMEOUT = 90


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


class WorkersDidNotStart(Exception):
    """A worker died or never answered a ping; the message holds what it printed."""


class CeleryWorkers:
    """Celery workers (`celery -A kahn_site worker`) in subprocesses, on a queue of their own, and a
    client app that sends them tasks through the broker at `redis_url` (the workers' REDIS_URL)."""

    def __init__(self, env: dict[str, str], redis_url: str, queue: str = "kahn-test") -> None:
        self.queue = f"{queue}-{uuid.uuid4().hex[:12]}"
        self.env = env
        self.redis_url = redis_url
        self.processes: list[subprocess.Popen] = []
        self.names: list[str] = []
        self.client = Celery("kahn-tests", broker=redis_url, backend=redis_url)

    def start(self, count: int = 1) -> list[str]:
        names = [f"{self.queue}-{n}@test" for n in range(count)]
        self.names += names
        for name in names:
            self.processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "celery",
                        "-A",
                        "kahn_site",
                        "worker",
                        "--pool",
                        "solo",
                        "--queues",
                        self.queue,
                        "--hostname",
                        name,
                        "--without-gossip",
                        "--without-mingle",
                        "--loglevel",
                        "INFO",
                    ],
                    cwd=PROJECT,
                    env=self.env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        self._wait_until_ready(names)
        return names

    def _wait_until_ready(self, names: list[str]) -> None:
        deadline = time.monotonic() + TASK_TIMEOUT
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    raise WorkersDidNotStart(f"a worker exited early:\n{process.stdout.read()}")
            replies = self.client.control.ping(destination=names, timeout=0.5)
            if {name for reply in replies for name in reply} >= set(names):
                return
        raise WorkersDidNotStart("the workers did not answer a ping in time")

    def wait_idle(self) -> None:
        """Until every task sent so far has run: the queue empty, and no worker holding or running one."""
        store = redis.Redis.from_url(self.redis_url)
        inspect = self.client.control.inspect(destination=self.names, timeout=1)
        deadline = time.monotonic() + TASK_TIMEOUT
        while True:
            held = [inspect.active() or {}, inspect.reserved() or {}]
            # A worker of the solo pool answers nothing while it runs a task: no answer is busy.
            answered = all(set(replies) >= set(self.names) for replies in held)
            busy = any(tasks for replies in held for tasks in replies.values())
            if answered and not busy and not store.llen(self.queue):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the workers still had tasks after {TASK_TIMEOUT} s: {held}")
            time.sleep(0.1)

    def send(self, task: str):
        return self.client.send_task(task, queue=self.queue)

    def stop(self) -> str:
        logs = []
        for process in self.processes:
            process.terminate()
            try:
                out, _ = process.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                out, _ = process.communicate()
            logs.append(out)
        store = redis.Redis.from_url(self.redis_url)
        for key in store.scan_iter(f"*{self.queue}*"):
            store.delete(key)
        return "\n".join(logs)
