"""A producer on the wire, for the request body tests: one request over a raw socket, its body sent
from an iterable as the server takes it (never held whole), and the answer read as soon as the
server gives one, even while the body is still being sent. And the resident memory of a server's
processes, from /proc."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

# A request that gets no answer within this long fails its test (it is a bound, not a measure).
GIVE_UP_AFTER = 120.0


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    body_bytes_sent: int  # how much of the body the connection took
    continued: bool  # whether "100 Continue" came before the answer

    def json(self) -> Any:
        return orjson.loads(self.body)


def _parse(raw: bytes) -> tuple[int, dict[str, str], bytes, bool]:
    head, _, body = raw.partition(b"\r\n\r\n")
    continued = False
    while head.startswith(b"HTTP/1.1 100"):  # an interim answer: the final one follows
        head, _, body = body.partition(b"\r\n\r\n")
        continued = True
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)
    }
    if headers.get("transfer-encoding", "").lower() == "chunked":
        decoded, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            decoded, rest = decoded + rest[:size], rest[size + 2 :]
        body = decoded
    return int(status_line.split()[1]), headers, body, continued


def _only_interim(raw: bytes) -> bool:
    """Whether what came so far is "100 Continue" alone (complete or not): no answer yet."""
    while raw.startswith(b"HTTP/1.1 100"):
        _head, found, raw = raw.partition(b"\r\n\r\n")
        if not found:
            return True
    return not raw


def send(
    url: str,
    method: str,
    path: str,
    body: Iterable[bytes],
    headers: Mapping[str, str] | None = None,
    *,
    chunked: bool = True,
    hostile: bool = False,
) -> Answer:
    """Sends one request (`Connection: close`), with `Transfer-Encoding: chunked` unless `chunked`
    is false (then `headers` should declare a Content-Length), and returns the server's answer.

    A client stops sending its body when the answer comes; a `hostile` one goes on until the
    server closes the connection (or the body ends).
    """
    address = urlsplit(url)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {address.netloc}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    pending = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    pieces = iter(body)
    sent = 0
    sending, closed = True, False
    received = b""
    deadline = time.monotonic() + GIVE_UP_AFTER
    with socket.create_connection((address.hostname, address.port)) as connection:
        connection.setblocking(False)
        while sending or not closed:
            assert time.monotonic() < deadline, f"no end from {url}{path} after {sent} body bytes"
            readable, writable, _ = select.select(
                [] if closed else [connection], [connection] if sending else [], [], 0.5
            )
            if readable:
                try:
                    data = connection.recv(65536)
                except ConnectionResetError:
                    data = b""
                received += data
                closed = not data
                if not closed and _only_interim(received):
                    continue  # invited to send the body: it goes on
                # The server has answered: the rest of the body is not wanted (or it is closed).
                sending = sending and hostile and not closed
                continue
            if not writable:
                continue
            if not pending:
                piece = next(pieces, None)
                if piece is None:
                    pending, sending = (b"0\r\n\r\n" if chunked else b""), False
                else:
                    sent += len(piece)
                    pending = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
            try:
                pending = pending[connection.send(pending) :]
            except (BrokenPipeError, ConnectionResetError):
                sending, pending = False, b""
            if not sending and pending:
                connection.setblocking(True)
                with contextlib.suppress(OSError):
                    connection.sendall(pending)  # the end of a body sent whole
                connection.setblocking(False)
    assert received, f"{url}{path} closed the connection without an answer after {sent} body bytes"
    status, answer_headers, answer_body, continued = _parse(received)
    return Answer(status, answer_headers, answer_body, sent, continued)


def process_tree(pid: int) -> list[int]:
    """`pid` and every process under it."""
    tree = [pid]
    for parent in tree:
        for task in os.listdir(f"/proc/{parent}/task"):
            try:
                with open(f"/proc/{parent}/task/{task}/children") as children:
                    tree.extend(int(child) for child in children.read().split())
            except FileNotFoundError:
                continue  # a thread that ended since the listing: it has no children to count
    return tree


def memory_kib(pids: Iterable[int], field: str = "VmRSS") -> int:
    """The sum of `field` (VmRSS: resident now; VmHWM: the most ever resident) over `pids`."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as status:
            total += next(int(line.split()[1]) for line in status if line.startswith(f"{field}:"))
    return total
