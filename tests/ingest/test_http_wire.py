"""The wire client of the request body tests: "100 Continue" is an invitation, not the answer."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.ingest.http_wire import send

pytestmark = pytest.mark.database_agnostic


def invites_at_once(listener: socket.socket) -> None:
    """Answers "100 Continue" as soon as the headers are in, then 200 with the body's length once
    it is in, or 408 if it does not come within two seconds."""
    connection, _ = listener.accept()
    with connection:
        received = b""
        while b"\r\n\r\n" not in received:
            received += connection.recv(65536)
        head, _, body = received.partition(b"\r\n\r\n")
        length = int(
            next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:]
        )
        connection.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        connection.settimeout(2.0)
        try:
            while len(body) < length:
                data = connection.recv(65536)
                if not data:
                    return
                body += data
        except TimeoutError:
            connection.sendall(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
            return
        answer = str(len(body)).encode()
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))


def body_after_the_invitation() -> Iterator[bytes]:
    """Two pieces, made once the invitation has surely come: it is read between them."""
    time.sleep(0.5)
    yield b"x" * 10
    yield b"y" * 10


def test_the_body_goes_on_after_100_continue():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        server = threading.Thread(target=invites_at_once, args=(listener,))
        server.start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        headers = {"Expect": "100-continue", "Content-Length": "20"}
        answer = send(url, "POST", "/", body_after_the_invitation(), headers, chunked=False)
        server.join()
    assert (answer.status, answer.body, answer.continued) == (200, b"20", True)
