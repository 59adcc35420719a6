"""WSGI entry point: HTTP only, for `manage.py serve --http-workers N` (gunicorn's sync workers).

Django's sync views run here without the thread hop every ASGI request pays; WebSocket stays with
daphne (kahn_site.asgi). Static files come from the app itself, as under `manage.py serve`.

A request's body is read only when a view asks for it, after the tenant middleware has checked the
request's credentials; every read of it ends at the request's deadline (ingest.bodies).
"""

import gc
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from django.contrib.staticfiles.handlers import StaticFilesHandler
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kahn_site.settings")
django_application = StaticFilesHandler(get_wsgi_application())

from ingest.bodies import BodyTimeout, body_timeout  # noqa: E402


class _Alarm:
    """Ends a blocking read at a deadline. A sync worker serves one request at a time on its main
    thread, where SIGALRM interrupts a `recv` that a trickling client keeps alive byte by byte (a
    socket timeout would restart with every byte)."""

    installed = False
    reading = False

    @classmethod
    def usable(cls) -> bool:
        return cls.installed and threading.current_thread() is threading.main_thread()

    @classmethod
    def install(cls) -> None:
        signal.signal(signal.SIGALRM, cls.ring)
        cls.installed = True

    @classmethod
    def ring(cls, signum: int, frame: Any) -> None:
        if cls.reading:
            raise BodyTimeout()


class DeadlineInput:
    """`wsgi.input` whose reads fail with `BodyTimeout` once the request's deadline has passed."""

    def __init__(self, stream: Any, deadline: float) -> None:
        self.stream = stream
        self.deadline = deadline

    def _until_deadline(self, read: Callable[..., Any], *args: Any) -> Any:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise BodyTimeout()
        if not _Alarm.usable():
            return read(*args)
        signal.setitimer(signal.ITIMER_REAL, remaining)
        _Alarm.reading = True
        try:
            return read(*args)
        finally:
            _Alarm.reading = False
            signal.setitimer(signal.ITIMER_REAL, 0)

    def read(self, size: int | None = None) -> bytes:
        return self._until_deadline(self.stream.read, size)

    def readline(self, size: int | None = None) -> bytes:
        return self._until_deadline(self.stream.readline, size)

    def readlines(self, hint: int | None = None) -> list[bytes]:
        return self._until_deadline(self.stream.readlines, hint)

    def __iter__(self) -> Any:
        return iter(self.readline, b"")


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    environ["wsgi.input"] = DeadlineInput(environ["wsgi.input"], time.monotonic() + body_timeout())
    return django_application(environ, start_response)


if threading.current_thread() is threading.main_thread():
    _Alarm.install()

# What is loaded now lives as long as the worker: frozen out of the cyclic garbage collector, whose
# full collections would otherwise walk all of Django on requests that allocate many objects (a
# batch of 500 events), and leave copy-on-write pages alone.
gc.freeze()
