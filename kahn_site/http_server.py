"""daphne, admitting each request's body before reading it (`manage.py serve`; ingest.bodies).

daphne reads a request's whole body, to memory or a temporary file, and queues all of it for the
application before the application sees the request: an ASGI middleware would come too late to
refuse a 600 MB body. So the request admits its body here, when its headers are in: reading from
the socket pauses while `admission_refusal` decides (off the event loop when it asks the
database), which leaves at most what arrived with the headers read, one socket read (64 KiB). A
refused request is answered and its connection closed, unread. An admitted one is read as daphne
reads it, but never past `MAX_BODY_BYTES`, and never for longer than the body timeout.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import unquote

from channels.db import database_sync_to_async
from daphne.http_protocol import HTTPFactory, WebRequest
from daphne.server import Server
from django.http import HttpResponse, JsonResponse
from twisted.internet import reactor  # after daphne.server, which installs the asyncio reactor

from ingest.bodies import (
    MAX_BODY_BYTES,
    admission_needs_database,
    admission_refusal,
    body_timeout,
    oversize_response,
    timeout_response,
)
from kahn_site.api_errors import error_body

logger = logging.getLogger(__name__)


class AdmittingWebRequest(WebRequest):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._admitting = False  # admission is being decided; the socket is not read meanwhile
        self._held: tuple[bytes, bytes, bytes] | None = None  # the whole body came first: wait
        self._closed = False  # answered here, or the connection is gone: nothing more to handle
        self._deadline: Any = None
        self._body_bytes = 0
        self._expects_continue = False
        super().__init__(*args, **kwargs)

    # ------------------------------------------------ Twisted's callbacks, in the order they come

    def gotLength(self, length: int | None) -> None:
        """All headers are in, and no byte of the body has been handled yet."""
        super().gotLength(length)
        if length == 0:
            return
        channel = self.channel
        raw_path = channel._path.split(b"?", 1)[0]
        self._admission_path = unquote(raw_path.decode("ascii", "replace"))
        # Twisted types its reactor by interfaces written without `self`: the delay reads as `self`.
        self._deadline = reactor.callLater(body_timeout(), self._too_slow)  # type: ignore[arg-type]
        headers = {
            name.decode("latin-1").lower(): ", ".join(v.decode("latin-1") for v in values)
            for name, values in self.requestHeaders.getAllRawHeaders()
        }
        # "100 Continue" invites the body: sent only once it is admitted (Twisted would send it now).
        if headers.get("expect", "").lower() == "100-continue":
            self.requestHeaders.removeHeader(b"Expect")
            self._expects_continue = channel._version == b"HTTP/1.1"
        method = channel._command.decode("latin-1")
        if not admission_needs_database(self._admission_path, headers):
            self._admitted(admission_refusal(method, self._admission_path, headers))
            return
        self._admitting = True
        channel._networkProducer.pauseProducing()
        check = database_sync_to_async(admission_refusal, thread_sensitive=False)
        decision = asyncio.ensure_future(check(method, self._admission_path, headers))
        decision.add_done_callback(self._decided)

    def handleContentChunk(self, data: bytes) -> None:
        if self._closed:
            return
        self._body_bytes += len(data)
        if self._body_bytes > MAX_BODY_BYTES:
            self._refuse(oversize_response())
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """The whole body is in: daphne takes the request on, once it is admitted."""
        self._cancel_deadline()
        if self._closed:
            return
        if self._admitting:
            self._held = (command, path, version)
            return
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Any) -> None:
        self._cancel_deadline()
        self._closed = True
        super().connectionLost(reason)

    # ------------------------------------------------ admission

    def _decided(self, decision: asyncio.Future[HttpResponse | None]) -> None:
        self._admitting = False
        if self._closed:
            return
        try:
            refusal = decision.result()
        except Exception:
            logger.exception("admitting a request body failed")
            body = error_body("internal_error", "the server failed to answer; the error is logged")
            refusal = JsonResponse(body, status=500)
        if self.channel is not None and refusal is None:
            self.channel._networkProducer.resumeProducing()
        self._admitted(refusal)

    def _admitted(self, refusal: HttpResponse | None) -> None:
        if refusal is not None:
            self._refuse(refusal)
            return
        if self._held is not None:
            held, self._held = self._held, None
            super().requestReceived(*held)
        elif self._expects_continue and self.channel is not None:
            self.channel._send100Continue()

    def _too_slow(self) -> None:
        self._deadline = None
        self._refuse(timeout_response())

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _refuse(self, response: HttpResponse) -> None:
        """Answers before daphne has taken the request on, and closes the connection: what is left
        of the body is never read."""
        self._closed = True
        self._cancel_deadline()
        channel = self.channel
        if channel is None or channel.transport is None:
            return
        lines = [f"HTTP/1.1 {response.status_code} {response.reason_phrase}"]
        lines += [f"{name}: {value}" for name, value in response.items()]
        lines += [f"Content-Length: {len(response.content)}", "Connection: close"]
        if self.server.server_name:
            lines.append(f"Server: {self.server.server_name}")
        channel.transport.write("\r\n".join([*lines, "", ""]).encode("latin-1") + response.content)
        channel.loseConnection()


class AdmittingHTTPFactory(HTTPFactory):
    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        protocol.requestFactory = AdmittingWebRequest
        return protocol


class AdmittingServer(Server):
    """daphne's server, whose HTTP requests admit their bodies before reading them."""

    @property
    def http_factory(self) -> AdmittingHTTPFactory:
        return self._admitting_factory

    @http_factory.setter
    def http_factory(self, factory: HTTPFactory) -> None:
        # `Server.run` makes its factory where nothing can hand it another: it is replaced here.
        self._admitting_factory = AdmittingHTTPFactory(self)
