"""`manage.py serve`: KAHN Scope over HTTP (and WebSocket) with daphne, the one ASGI server.

OSS mode has no login, so it listens on loopback only and refuses any other address: exposing it
would show every run to anyone who can reach the port. Cloud mode binds where it is told, behind
a proxy that terminates TLS.

OSS mode also follows the archive (KAHN_ARCHIVE) in the same process, unless `--no-follow`: its
channel layer lives in memory, so live pages move only with imports made where the sockets are.
Cloud mode follows nothing: runs arrive by the ingest API, or by `ingest_archive --tenant SLUG
--follow`, which publishes through Redis.

Cloud mode may instead serve HTTP with `--http-workers N` gunicorn sync workers (WSGI) and leave
WebSocket to daphne on `--ws-port`; the proxy sends `/ws/` there. One daphne process runs Django's
sync views one thread hop at a time on one core; the producers' ingest requests are sync views,
and WSGI workers serve them on every core, with no hop (tests/bench/bench_ingest_http.py
measures both).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper
from django.db import connection

from ingest.archive import (
    ArchiveError,
    ArchiveReport,
    ArchiveSource,
    WarningsOnce,
    archive_import,
    archive_source,
)
from kahn_site.checks import require_migrated
from kahn_site.metrics import MULTIPROCESS_DIR_VARIABLE
from runs.alerts.delivery import delivery_loop
from runs.alerts.wake import delivery_wake
from tenants.models import LOCAL_TENANT_SLUG, Tenant

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8080
OSS_HOST = "127.0.0.1"
CLOUD_HOST = "0.0.0.0"
# How many changed runs one line of the follower names; a first import of a big archive says how many more.
RUNS_NAMED = 10


def listen_check(host: str, port: int, option: str) -> None:
    """Refuses, in one sentence, an address this process could not listen on: before it says it serves.

    The probe binds as the servers do (SO_REUSEADDR, so a closed connection's TIME_WAIT does not
    count), which on Linux still fails where another socket listens.
    """
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CommandError(f"cannot listen on {host!r}: {exc.strerror}") from None
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    with_make = " (with make: make run PORT=N)" if option == "--port" else ""
                    raise CommandError(
                        f"port {port} on {host} is already in use by another program (perhaps another "
                        f"KAHN Scope): stop it, or serve on another port with {option} N{with_make}."
                    ) from None
                if exc.errno == errno.EACCES:
                    raise CommandError(
                        f"port {port} on {host} is reserved to privileged programs: serve on a port "
                        f"above 1023 with {option} N."
                    ) from None
                # Anything else (an address family this host lacks, say) is the server's to find.


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Command(BaseCommand):
    help = "Serves KAHN Scope: the pages, the API and live updates (daphne, ASGI)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--mode", choices=("oss", "cloud"), help="default: KAHN_MODE, else oss")
        parser.add_argument("--host", help=f"address to listen on (OSS: loopback only, default {OSS_HOST})")
        parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
        parser.add_argument(
            "--no-follow",
            action="store_true",
            help="OSS: do not import KAHN_ARCHIVE as it grows (it is followed by default)",
        )
        parser.add_argument(
            "--follow-interval", type=float, default=1.0, help="OSS: seconds between looks at the archive"
        )
        parser.add_argument(
            "--http-workers",
            type=int,
            default=0,
            help="cloud: serve HTTP with this many gunicorn sync workers on --port, and WebSocket with "
            "daphne on --ws-port (route /ws/ there); default 0: daphne alone serves both",
        )
        parser.add_argument("--ws-port", type=int, help="with --http-workers: daphne's (default: --port + 1)")

    def handle(self, *args: Any, **options: Any) -> None:
        mode = options["mode"] or settings.KAHN_MODE
        host = options["host"] or (CLOUD_HOST if mode == "cloud" else OSS_HOST)
        port = options["port"]
        if mode == "oss" and not is_loopback(host):
            raise CommandError(
                f"OSS mode serves on loopback only, and {host!r} is not a loopback address: it has no "
                "login, so anyone who could reach the port would see every run. Use --host 127.0.0.1 "
                "(or ::1), or run in cloud mode behind a proxy."
            )
        if not 0 < port < 65536:
            raise CommandError(f"--port must be between 1 and 65535, not {port}")
        if options["follow_interval"] <= 0:
            raise CommandError("--follow-interval must be a positive number of seconds")
        workers = options["http_workers"]
        ws_port = options["ws_port"] or port + 1
        if workers:
            if mode != "cloud":
                raise CommandError(
                    "--http-workers is for cloud mode: OSS serves one operator from one process, whose "
                    "live updates travel in that process's memory."
                )
            if not 0 < ws_port < 65536 or ws_port == port:
                raise CommandError(f"--ws-port must be a port other than --port, not {ws_port}")
        if mode != settings.KAHN_MODE:
            # Settings read KAHN_MODE once, when they load: start again with it set, so that every
            # backend (database, channel layer, auth) is the chosen mode's.
            argv = [
                sys.executable,
                str(settings.BASE_DIR / "manage.py"),
                "serve",
                "--host",
                host,
                "--port",
                str(port),
                "--follow-interval",
                str(options["follow_interval"]),
                *(["--no-follow"] if options["no_follow"] else []),
                *(["--http-workers", str(workers), "--ws-port", str(ws_port)] if workers else []),
            ]
            os.execve(sys.executable, argv, {**os.environ, "KAHN_MODE": mode})
        require_migrated()
        listen_check(host, port, "--port")
        if workers:
            listen_check(host, ws_port, "--ws-port")
            self._serve_with_workers(host, port, ws_port, workers, options["verbosity"])
            return
        follower = None
        if not settings.CLOUD and not options["no_follow"]:
            follower = ArchiveFollower(settings.KAHN_ARCHIVE, options["follow_interval"], self.stdout)
        # OSS has no Celery: alerts are delivered (and silent runs found) by a thread of this process.
        alerts = None if settings.CLOUD else AlertsLoop()

        def listening() -> None:
            # The archive is followed once the server listens: what it says comes after the address.
            if follower is not None:
                follower.start()
            if alerts is not None:
                alerts.start()

        try:
            self._serve(host, port, options["verbosity"], listening=listening)
        finally:
            if follower is not None and follower.ident is not None:
                follower.stop()
            if alerts is not None and alerts.ident is not None:
                alerts.stop()

    def _serve_with_workers(self, host: str, port: int, ws_port: int, workers: int, verbosity: int) -> None:
        """gunicorn for HTTP and daphne for WebSocket, as two child processes that stop together."""
        manage = str(settings.BASE_DIR / "manage.py")
        shown = f"[{host}]" if ":" in host else host
        bind = f"{shown}:{port}"
        gunicorn = [
            sys.executable,
            "-m",
            "gunicorn",
            "kahn_site.wsgi:application",
            "--bind",
            bind,
            "--workers",
            str(workers),
            "--worker-class",
            "sync",
            # Marks an exited worker's metrics as gone (kahn_site.metrics).
            "--config",
            "python:kahn_site.gunicorn_config",
            # Behind the proxy, which buffers slow clients: a sync worker is never held by one.
            "--graceful-timeout",
            "20",
            # A worker silent this long is restarted: longer than a body may take to arrive, so that
            # a trickling body is answered 408 (ingest.bodies) rather than cut off with its worker.
            "--timeout",
            str(max(30, math.ceil(settings.KAHN_REQUEST_BODY_TIMEOUT) + 10)),
            *(["--access-logfile", "-"] if verbosity > 1 else []),
        ]
        daphne = [sys.executable, manage, "serve", "--host", host, "--port", str(ws_port)]
        daphne += ["--verbosity", str(verbosity)]
        self.stdout.write(
            f"KAHN Scope ({settings.KAHN_MODE}) HTTP on http://{bind}/ ({workers} workers), "
            f"WebSocket on ws://{shown}:{ws_port}/ws/  (Ctrl-C stops both)"
        )
        self.stdout.flush()
        # The workers and daphne count into one directory, so that any worker's /metrics adds them all up.
        metrics_dir, own_metrics_dir = os.environ.get(MULTIPROCESS_DIR_VARIABLE), None
        if metrics_dir:
            # The operator's: what an earlier run left there would be counted again.
            for stale in Path(metrics_dir).glob("*.db"):
                stale.unlink()
        else:
            metrics_dir = own_metrics_dir = tempfile.mkdtemp(prefix="kahn-metrics-")
        env = {**os.environ, MULTIPROCESS_DIR_VARIABLE: metrics_dir}
        children = [subprocess.Popen(daphne, env=env), subprocess.Popen(gunicorn, env=env)]

        def stop(signum: int, frame: Any) -> None:
            raise SystemExit(0)

        signal.signal(signal.SIGTERM, stop)
        try:
            # Either one ending ends the other: half a server is worse than a restart.
            while all(child.poll() is None for child in children):
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            for child in children:
                if child.poll() is None:
                    child.terminate()
            for child in children:
                try:
                    child.wait(timeout=25)
                except subprocess.TimeoutExpired:
                    child.kill()
            if own_metrics_dir:
                shutil.rmtree(own_metrics_dir, ignore_errors=True)

    def _serve(self, host: str, port: int, verbosity: int, listening: Callable[[], None] | None) -> None:
        from channels.routing import get_default_application
        from daphne.access import AccessLogGenerator
        from daphne.endpoints import build_endpoint_description_strings

        from kahn_site.http_server import AdmittingServer

        # Static files come from the app itself: OSS has no web server in front and no build step.
        # Any ASGI application, in Django; its stubs name Django's own handler.
        application = ASGIStaticFilesHandler(get_default_application())  # type: ignore[arg-type]
        shown = f"[{host}]" if ":" in host else host

        def ready() -> None:
            # Called by daphne once it listens: nothing claims to serve before it does.
            url = f"http://{shown}:{port}/"
            self.stdout.write(
                f"KAHN Scope ({settings.KAHN_MODE}) on {url}  (--port to change; Ctrl-C stops it)"
            )
            self.stdout.flush()
            if listening is not None:
                listening()

        server = AdmittingServer(
            application=application,
            endpoints=build_endpoint_description_strings(host=host, port=port),
            action_logger=AccessLogGenerator(sys.stdout) if verbosity > 1 else None,
            verbosity=verbosity,
            ready_callable=ready,
        )
        server.run()
        if server.abort_start:
            # Taken between the check and the listen: daphne gave up without serving.
            raise CommandError(f"could not listen on {host} port {port}: it is in use or not available")


class AlertsLoop(threading.Thread):
    """OSS mode's alerts worker (cloud's is Celery): delivers due notifications within seconds,
    at once after the write path commits one, and runs the periodic `run_interrupted` check."""

    def __init__(self) -> None:
        super().__init__(name="kahn-alerts", daemon=True)
        self.stopping = threading.Event()

    def run(self) -> None:
        delivery_loop(stop=self.stopping)

    def stop(self) -> None:
        self.stopping.set()
        delivery_wake()
        # A delivery in flight ends within its timeout; an unfinished one is sent again next start.
        self.join(timeout=15)


class ArchiveFollower(threading.Thread):
    """Imports what the archive gains, every `interval` seconds, into the local tenant.

    The same import as `ingest_archive --follow`, through the one write path, so what it commits
    reaches this process's sockets. An archive that does not exist yet is waited for, not an error:
    the server may well start before the first producer does. It speaks only when something changed:
    runs imported (by name), a new warning, the archive appearing or going, a failure; a pass that
    found nothing new is silent.
    """

    def __init__(self, root: Path | str, interval: float, stdout: OutputWrapper) -> None:
        super().__init__(name="kahn-archive-follower", daemon=True)
        self.root = root
        self.interval = interval
        self.out = stdout
        self.stopping = threading.Event()

    def run(self) -> None:
        tenant = Tenant.objects.get(slug=LOCAL_TENANT_SLUG)
        self.say(
            f"following the archive {self.root} (KAHN_ARCHIVE) every {self.interval:g} s; "
            "--no-follow turns it off"
        )
        # The last problem said, so that one which lasts is said once, not at every pass.
        said: str | None = None
        warnings = WarningsOnce()
        # Made at the first pass and kept: an archive in S3 is read with one client.
        source: ArchiveSource | None = None
        try:
            while not self.stopping.is_set():
                try:
                    source = source or archive_source(self.root)
                    report = archive_import(tenant=tenant, root=source)
                except ArchiveError as unreadable:
                    if not isinstance(self.root, Path):
                        # In S3: no objects yet, or credentials refused; either may change.
                        problem = f"{unreadable}; trying again every {self.interval:g} s"
                    elif self.root.exists():
                        problem = f"{unreadable}; waiting for a producer to write there"
                    else:
                        problem = (
                            f"the archive {self.root} does not exist yet: its runs appear here once a "
                            "producer writes there"
                        )
                    if problem != said:
                        self.say(
                            f"{problem}. To follow another archive, set KAHN_ARCHIVE=path/to/.kahn/archive "
                            "(with make: make run ARCHIVE=path/to/.kahn/archive)."
                        )
                        said = problem
                except Exception as failure:
                    # Never the server's end: a bad pass is logged and the next one tries again.
                    problem = f"{type(failure).__name__}: {failure}"
                    if problem != said:
                        logger.exception(
                            "importing %s failed; trying again every %g s", self.root, self.interval
                        )
                        said = problem
                    connection.close()
                else:
                    if said is not None:
                        self.say(f"the archive {self.root} can be read now: following it")
                        said = None
                    for warning in warnings.fresh(report.warnings):
                        self.say(f"warning: {warning}")
                    if report.runs:
                        self.say(changed_runs(report))
                self.stopping.wait(self.interval)
        finally:
            connection.close()

    def say(self, line: str) -> None:
        self.out.write(line)
        self.out.flush()

    def stop(self) -> None:
        """Lets the pass in flight finish its transaction, then ends the thread."""
        self.stopping.set()
        self.join(timeout=30)


def changed_runs(report: ArchiveReport) -> str:
    """One line naming the runs a pass changed: `imported 58 events into 2 runs: run_a +35, run_b +23`."""
    named = ", ".join(f"{r.run_id} +{r.events}" for r in report.runs[:RUNS_NAMED])
    more = len(report.runs) - RUNS_NAMED
    runs = "1 run" if len(report.runs) == 1 else f"{len(report.runs)} runs"
    events = "1 event" if report.events == 1 else f"{report.events} events"
    return f"imported {events} into {runs}: {named}" + (f", and {more} more" if more > 0 else "")
