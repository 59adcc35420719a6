"""`manage.py serve`: KAHN Scope over HTTP (and WebSocket) with daphne, the one ASGI server.

OSS mode has no login, so it listens on loopback only and refuses any other address: exposing it
would show every run to anyone who can reach the port. Cloud mode binds where it is told, behind
a proxy that terminates TLS.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from typing import Any

from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.management.base import BaseCommand, CommandError, CommandParser

from kahn_site.checks import require_migrated

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
            ]
            os.execve(sys.executable, argv, {**os.environ, "KAHN_MODE": mode})
        require_migrated()
        self._serve(host, port, options["verbosity"])

    def _serve(self, host: str, port: int, verbosity: int) -> None:
        from channels.routing import get_default_application
        from daphne.access import AccessLogGenerator
        from daphne.endpoints import build_endpoint_description_strings
        from daphne.server import Server

        # Static files come from the app itself: OSS has no web server in front and no build step.
        application = ASGIStaticFilesHandler(get_default_application())
        shown = f"[{host}]" if ":" in host else host
        self.stdout.write(f"KAHN Scope ({settings.KAHN_MODE}) on http://{shown}:{port}/  (Ctrl-C stops it)")
        self.stdout.flush()
        Server(
            application=application,
            endpoints=build_endpoint_description_strings(host=host, port=port),
            action_logger=AccessLogGenerator(sys.stdout) if verbosity > 1 else None,
            verbosity=verbosity,
        ).run()
