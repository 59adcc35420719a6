"""Live updates leave the process that committed them: one publisher per process hands messages to
the channel layer from any thread, after commit, and never makes the writer wait for it.

Where it sends from:
- the event loop that serves this process's sockets (daphne's, or a test's), bound by the ASGI
  application on each call (`LivePublisher.serving`): writers in request threads or in `serve`'s
  archive follower hand their messages over with `call_soon_threadsafe`;
- otherwise, when the layer reaches other processes (Redis), a loop of its own in a background
  thread: `ingest_archive --follow` publishing to the replicas' sockets;
- otherwise nowhere: with the in-memory layer and no server loop in this process, nobody can listen.

Coalescing: a group sent to within the last `COALESCE_SECONDS` waits until that much time has
passed, and what arrives meanwhile is merged into one message (PERF.md: a group_send per event
saturates the layer under a busy run); a group that was quiet is sent to at once.

Nobody listening: before a message is built the layer is asked, in one round trip for the whole
flush, which groups have members; the others are dropped unbuilt. A subscriber that joins later
reads what it missed from the database (runs.consumers), so skipping is never a gap.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Self

from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)

# At most one message per group per this many seconds while a group is busy: within PERF.md's range,
# late enough to merge a burst, soon enough to read as live.
COALESCE_SECONDS = 0.05
# How long a process that is exiting waits for its last messages to leave (background thread only).
DRAIN_SECONDS = 2.0

Scope = dict[str, Any]
AsgiApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class Outgoing(Protocol):
    """Something to send to one group; two of the same group merge while they wait."""

    @property
    def group(self) -> str: ...

    coalesce: ClassVar[bool]

    def merged_with(self, newer: Self) -> Self: ...

    def message(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class CloseSockets:
    """Closes every socket in `group` (the sockets of a session that signed out, of a revoked key)."""

    group: str
    code: int
    reason: str
    coalesce: ClassVar[bool] = False

    def merged_with(self, newer: CloseSockets) -> CloseSockets:
        return newer

    def message(self) -> dict[str, Any]:
        return {"type": "live.close", "code": self.code, "reason": self.reason}


class _Sender:
    """The publisher's state inside one event loop: what waits, when it is due, when groups last went."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: dict[str, Outgoing] = {}
        self.due: dict[str, float] = {}
        self.last_sent: dict[str, float] = {}
        self.worker: asyncio.Task[None] | None = None
        self.wakeup: asyncio.Event | None = None

    def take(self, items: Iterable[Outgoing]) -> None:
        """Runs in the loop (handed over with call_soon_threadsafe)."""
        now = self.loop.time()
        for item in items:
            group = item.group
            waiting = self.pending.get(group)
            self.pending[group] = item if waiting is None else waiting.merged_with(item)
            if group not in self.due:
                last = self.last_sent.get(group)
                quiet = not item.coalesce or last is None or now - last >= COALESCE_SECONDS
                self.due[group] = now if quiet or last is None else last + COALESCE_SECONDS
        if self.wakeup is None:
            self.wakeup = asyncio.Event()
        self.wakeup.set()
        if self.worker is None or self.worker.done():
            self.worker = self.loop.create_task(self._work())

    async def _work(self) -> None:
        assert self.wakeup is not None
        while self.due:
            delay = min(self.due.values()) - self.loop.time()
            if delay > 0:
                self.wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wakeup.wait(), delay)
                continue
            await self._send_due()

    async def drain(self) -> None:
        """Sends everything now, windows or not, and waits for sends in flight: the process is
        about to exit."""
        for group in self.due:
            self.due[group] = 0.0
        if self.wakeup is not None:
            self.wakeup.set()
        # The worker ends once nothing is due, after its last send has returned.
        while self.worker is not None and not self.worker.done():
            await asyncio.wait({self.worker})

    async def _send_due(self) -> None:
        now = self.loop.time()
        ready = [group for group, due in self.due.items() if due <= now]
        items = []
        for group in ready:
            del self.due[group]
            items.append(self.pending.pop(group))
        layer = get_channel_layer()
        if layer is None or not items:
            return
        try:
            listened = await _groups_with_members(layer, [item.group for item in items])
            sending = [item for item in items if item.group in listened]
            results = await asyncio.gather(
                *(layer.group_send(item.group, {**item.message(), "group": item.group}) for item in sending),
                return_exceptions=True,
            )
        except Exception:
            # Redis away: subscribers fill the gap from the database at the next message they get.
            logger.warning("live updates for %d groups were not sent", len(items), exc_info=True)
            return
        sent_at = self.loop.time()
        for item, result in zip(sending, results, strict=True):
            if isinstance(result, BaseException):
                logger.warning("live update to %s was not sent: %r", item.group, result)
            else:
                self.last_sent[item.group] = sent_at
        if len(self.last_sent) > 1000:
            # Only groups sent to within the window matter; the rest would only grow the dict.
            self.last_sent = {g: t for g, t in self.last_sent.items() if sent_at - t < COALESCE_SECONDS}


async def _groups_with_members(layer: Any, groups: list[str]) -> set[str]:
    asked = getattr(layer, "groups_with_members", None)
    # A layer that cannot tell (another backend in a test) is sent everything.
    return await asked(groups) if asked is not None else set(groups)


class LivePublisher:
    """This process's publisher (`live_publisher`); `submit` is safe from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._server_loop: asyncio.AbstractEventLoop | None = None
        self._own_loop: asyncio.AbstractEventLoop | None = None
        self._senders: dict[asyncio.AbstractEventLoop, _Sender] = {}

    def serving(self, application: AsgiApp) -> AsgiApp:
        """Wraps the ASGI application: the loop that calls it is the one that serves the sockets."""

        async def bind_loop_then_serve(scope: Scope, receive: Any, send: Any) -> None:
            loop = asyncio.get_running_loop()
            if self._server_loop is not loop:
                self._server_loop = loop
            await application(scope, receive, send)

        return bind_loop_then_serve

    def active(self) -> bool:
        """Whether anything submitted now could reach a socket (if not, callers build nothing)."""
        return self._sending_loop() is not None

    def submit(self, items: list[Outgoing]) -> None:
        if not items:
            return
        loop = self._sending_loop()
        if loop is None:
            return
        sender = self._sender(loop)
        with contextlib.suppress(RuntimeError):
            # RuntimeError: the loop closed meanwhile (a test's), and its sockets with it.
            loop.call_soon_threadsafe(sender.take, items)

    def _sending_loop(self) -> asyncio.AbstractEventLoop | None:
        loop = self._server_loop
        if loop is not None and not loop.is_closed():
            return loop
        if not getattr(get_channel_layer(), "reaches_other_processes", True):
            return None
        return self._background_loop()

    def _sender(self, loop: asyncio.AbstractEventLoop) -> _Sender:
        with self._lock:
            sender = self._senders.get(loop)
            if sender is None:
                for closed in [known for known in self._senders if known.is_closed()]:
                    del self._senders[closed]
                sender = self._senders[loop] = _Sender(loop)
            return sender

    def _background_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._own_loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="kahn-live-publisher", daemon=True).start()
                self._own_loop = loop
                atexit.register(self._drain_background_loop)
            return self._own_loop

    def _drain_background_loop(self) -> None:
        loop = self._own_loop
        sender = self._senders.get(loop) if loop is not None else None
        if loop is None or sender is None or loop.is_closed():
            return
        done = asyncio.run_coroutine_threadsafe(sender.drain(), loop)
        with contextlib.suppress(Exception):
            done.result(timeout=DRAIN_SECONDS)


live_publisher = LivePublisher()


# ---------------------------------------------------------------- receiving: one member per process


class LiveMember(Protocol):
    async def relay_message(self, message: dict[str, Any]) -> None: ...


class LiveRelay:
    """This process's one member of each live group its sockets follow, handing every message to
    the local sockets of its group, one after the other.

    Channels would make each socket a member of its own, so a group of 200 sockets on one replica
    took 200 receives per message, each a few tasks woken and switched, for every socket and every
    message. Here it is one receive per message and a plain call per socket.
    Sockets must not wait on anything slow in `relay_message` (a database read): it holds up the
    sockets after them.
    """

    # channels-redis drops a group's members after group_expiry (a day): sooner than that, join again.
    REJOIN_SECONDS = 3600

    def __init__(self) -> None:
        self.members: dict[str, set[LiveMember]] = {}
        self.channel: str | None = None
        self.layer: Any = None
        self.tasks: list[asyncio.Task[None]] = []
        # Joining and leaving go to the layer one at a time, so that a group_discard and the next
        # group_add of the same group can never reach Redis in the other order.
        self.membership = asyncio.Lock()

    async def join(self, group: str, member: LiveMember) -> None:
        """Returns once messages to `group` reach `member`."""
        async with self.membership:
            if self.channel is None:
                self.layer = get_channel_layer()
                self.channel = await self.layer.new_channel()
                loop = asyncio.get_running_loop()
                self.tasks = [loop.create_task(self._receive()), loop.create_task(self._rejoin())]
            members = self.members.get(group)
            if members is None:
                await self.layer.group_add(group, self.channel)
                members = self.members[group] = set()
            members.add(member)

    async def leave(self, group: str, member: LiveMember) -> None:
        async with self.membership:
            members = self.members.get(group)
            if members is None:
                return
            members.discard(member)
            if not members:
                del self.members[group]
                await self.layer.group_discard(group, self.channel)

    async def _receive(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except Exception:
                logger.warning("live relay could not receive; trying again", exc_info=True)
                await asyncio.sleep(1)
                continue
            for member in list(self.members.get(message.get("group", ""), ())):
                try:
                    await member.relay_message(message)
                except Exception:
                    logger.exception("a live socket failed on a %s message", message.get("type"))

    async def _rejoin(self) -> None:
        while True:
            await asyncio.sleep(self.REJOIN_SECONDS)
            async with self.membership:
                for group in list(self.members):
                    with contextlib.suppress(Exception):
                        await self.layer.group_add(group, self.channel)


_relays: dict[asyncio.AbstractEventLoop, LiveRelay] = {}


def live_relay() -> LiveRelay:
    """The relay of the running event loop (the server's; a test's own)."""
    loop = asyncio.get_running_loop()
    relay = _relays.get(loop)
    if relay is None:
        for closed in [known for known in _relays if known.is_closed()]:
            del _relays[closed]
        relay = _relays[loop] = LiveRelay()
    return relay


# ---------------------------------------------------------------- sockets bound to a credential
# A socket joins the group of the credential it was opened with; ending the credential closes them.

# WebSocket close codes of the 4000s are the application's: these mirror HTTP 401 and 403.
SOCKET_UNAUTHENTICATED = 4401
SOCKET_FORBIDDEN = 4403
# The credential could not be checked (the identity provider did not answer): try again later.
SOCKET_UNAVAILABLE = 4503


def credential_group_for_api_key(api_key_id: int) -> str:
    return f"kahn.close.key.{api_key_id}"


def credential_group_for_session(session_key: str) -> str:
    # Hashed: a session key is a secret and has no business in Redis key names.
    return f"kahn.close.session.{hashlib.sha256(session_key.encode()).hexdigest()[:40]}"


def live_close_sockets(group: str, *, code: int, reason: str) -> None:
    """Closes every socket of a credential group, in every process (call it after commit)."""
    live_publisher.submit([CloseSockets(group=group, code=code, reason=reason)])
