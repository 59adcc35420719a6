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
and WSGI workers serve them at several times its rate (tests/bench/bench_ingest_http.py).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper
from django.db import connection

from ingest.archive import ArchiveError, archive_import
from kahn_site.checks import require_migrated
from tenants.models import LOCAL_TENANT_SLUG, Tenant

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8080
OSS_HOST = "127.0.0.1"
CLOUD_HOST = "0.0.0.0"


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
        if workers:
            self._serve_with_workers(host, port, ws_port, workers, options["verbosity"])
            return
        follower = None
        if not settings.CLOUD and not options["no_follow"]:
            follower = ArchiveFollower(settings.KAHN_ARCHIVE, options["follow_interval"], self.stdout)
            follower.start()
        try:
            self._serve(host, port, options["verbosity"])
        finally:
            if follower is not None:
                follower.stop()

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
        children = [subprocess.Popen(daphne), subprocess.Popen(gunicorn)]

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

    def _serve(self, host: str, port: int, verbosity: int) -> None:
        from channels.routing import get_default_application
        from daphne.access import AccessLogGenerator
        from daphne.endpoints import build_endpoint_description_strings

        from kahn_site.http_server import AdmittingServer

        # Static files come from the app itself: OSS has no web server in front and no build step.
        application = ASGIStaticFilesHandler(get_default_application())
        shown = f"[{host}]" if ":" in host else host
        self.stdout.write(f"KAHN Scope ({settings.KAHN_MODE}) on http://{shown}:{port}/  (Ctrl-C stops it)")
        self.stdout.flush()
        AdmittingServer(
            application=application,
            endpoints=build_endpoint_description_strings(host=host, port=port),
            action_logger=AccessLogGenerator(sys.stdout) if verbosity > 1 else None,
            verbosity=verbosity,
        ).run()


class ArchiveFollower(threading.Thread):
    """Imports what the archive gains, every `interval` seconds, into the local tenant.

    The same import as `ingest_archive --follow`, through the one write path, so what it commits
    reaches this process's sockets. An archive that does not exist yet is waited for, not an error:
    the server may well start before the first producer does.
    """

    def __init__(self, root: Path, interval: float, stdout: OutputWrapper) -> None:
        super().__init__(name="kahn-archive-follower", daemon=True)
        self.root = root
        self.interval = interval
        self.out = stdout
        self.stopping = threading.Event()

    def run(self) -> None:
        tenant = Tenant.objects.get(slug=LOCAL_TENANT_SLUG)
        self.out.write(f"following {self.root} every {self.interval} s (--no-follow turns it off)")
        waiting = False
        warned: set[str] = set()
        try:
            while not self.stopping.is_set():
                try:
                    report = archive_import(tenant=tenant, root=self.root)
                except ArchiveError as missing:
                    if not waiting:
                        self.out.write(f"waiting for the archive: {missing}")
                        waiting = True
                except Exception:
                    # Never the server's end: a bad pass is logged and the next one tries again.
                    logger.exception("importing %s failed", self.root)
                    connection.close()
                else:
                    waiting = False
                    for warning in report.warnings:
                        if warning not in warned:  # a skipped folder is skipped at every pass
                            warned.add(warning)
                            self.out.write(f"warning: {warning}")
                    if report.runs:
                        self.out.write(f"imported {report.events} events into {len(report.runs)} runs")
                self.stopping.wait(self.interval)
        finally:
            connection.close()

    def stop(self) -> None:
        """Lets the pass in flight finish its transaction, then ends the thread."""
        self.stopping.set()
        self.join(timeout=30)
