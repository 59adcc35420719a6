"""`/ws/live` (SPEC section 7): a run's events and the tenant's history rows, as they are committed.

Client → server: `{"action": "subscribe" | "unsubscribe", "run_id": "...", "after_seq": n}` or
`{"action": ..., "runs": "*"}`. Server → client: `events`, `run` and `error` messages, and
`subscribed` / `unsubscribed` once a (un)subscription is in effect (`subscribed` carries
`next_seq`, the seq of the next event the socket will send for the run).

Live messages reach sockets through the process's relay (`kahn_site.live_fanout.LiveRelay`), not through
channels of their own. Each run subscription keeps the seq it sends next:

- Gapless resume: a subscription joins the run's group first, then sends what the database holds
  after `after_seq`; live messages that arrive meanwhile wait, and are then cut to what the read did
  not send. Nothing twice, nothing missed.
- A live message that starts beyond the next seq (one dropped by a full channel, or overtaken by a
  later writer's) or carries no events (a notice of a large batch) makes the subscription catch up
  from the database, which has every committed event, in a task of its own: the relay never waits
  on the database, and the subscription's later messages wait for the catch-up.

A bad message from the client gets an `error` message; it never closes the socket.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError

from kahn_site import metrics
from kahn_site.live_fanout import SOCKET_UNAUTHENTICATED, live_relay
from runs.live import event_text, live_run_group, live_runs_group
from runs.reduction import run_id_valid
from runs.selectors import run_events_after, run_stored_next_seq
from tenants.context import tenant_atomic
from tenants.sockets import SocketIdentity, SocketRefusal, socket_identity, socket_identity_still_valid

logger = logging.getLogger(__name__)

# A client's message is a small JSON object; anything larger is a mistake, refused unread.
MAX_MESSAGE_BYTES = 4096
MAX_RUN_SUBSCRIPTIONS = 100
# Events per frame, and per database read, when sending what is stored.
EVENTS_PER_FRAME = 500
MAX_SEQ = 2**31 - 1


class BadMessage(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class RunSubscription:
    group: str
    # The seq of the next event this socket sends for the run: everything before it was sent (or
    # was already the client's, by its after_seq).
    next_seq: int = 0
    # While the database is being read for it, live messages wait here, in the order they came.
    catching_up: bool = True
    waiting: list[dict[str, Any]] = field(default_factory=list)


def _stored_events(identity: SocketIdentity, run_id: str, after_seq: int) -> list[tuple[int, str]]:
    with tenant_atomic(identity.tenant):
        rows = run_events_after(
            tenant=identity.tenant, run_id=run_id, after_seq=after_seq, limit=EVENTS_PER_FRAME
        )
    return [(seq, event_text(payload, seq)) for seq, payload in rows]


def _stored_next_seq(identity: SocketIdentity, run_id: str) -> int:
    with tenant_atomic(identity.tenant):
        return run_stored_next_seq(tenant=identity.tenant, run_id=run_id)


class LiveConsumer(AsyncWebsocketConsumer):
    # No channel of its own: what a socket follows reaches it through the process's relay.
    # None: no channel layer (channels finds none by that name), which its stubs do not allow for.
    channel_layer_alias = None  # type: ignore[assignment]

    async def connect(self) -> None:
        self.identity: SocketIdentity | None = None
        self.runs: dict[str, RunSubscription] = {}
        self.history: str | None = None  # the tenant's rows group, while subscribed to "*"
        self.row_versions: dict[str, list[float]] = {}
        self.joined: set[str] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.counted = False  # in kahn_live_sockets, once its identity is known
        found = await database_sync_to_async(socket_identity)(cast(dict[str, Any], self.scope))
        # Accepted first, then closed: a close code reaches the client only after the handshake.
        await self.accept()
        if isinstance(found, SocketRefusal):
            await self.close(code=found.code, reason=found.reason)
            return
        self.identity = found
        metrics.LIVE_SOCKETS.inc()
        self.counted = True
        for group in found.credential_groups:
            await self._join(group)
        if found.needs_recheck:
            self._spawn(self._recheck_credential())

    async def disconnect(self, code: int) -> None:
        self.identity = None
        if self.counted:
            metrics.LIVE_SOCKETS.dec()
            self.counted = False
        for task in self.tasks:
            task.cancel()
        relay = live_relay()
        for group in self.joined:
            await relay.leave(group, self)
        self.joined.clear()

    # ------------------------------------------------------------ from the client

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.identity is None:
            return  # refused or closed: the socket is on its way out
        try:
            await self._act(self._parse(text_data))
        except BadMessage as bad:
            await self._send_json({"type": "error", "code": bad.code, "message": bad.message})

    def _parse(self, text: str | None) -> dict[str, Any]:
        if text is None:
            raise BadMessage("invalid_message", "send messages as JSON text frames, not binary")
        if len(text) > MAX_MESSAGE_BYTES:
            raise BadMessage("message_too_large", f"a message is at most {MAX_MESSAGE_BYTES} bytes")
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise BadMessage("invalid_json", "the message is not JSON") from None
        if not isinstance(message, dict):
            raise BadMessage("invalid_message", "a message is a JSON object with an action")
        return message

    async def _act(self, message: dict[str, Any]) -> None:
        action = message.get("action")
        if action not in ("subscribe", "unsubscribe"):
            raise BadMessage("unknown_action", 'the action is "subscribe" or "unsubscribe"')
        has_run, has_runs = "run_id" in message, "runs" in message
        if has_run == has_runs:
            raise BadMessage("invalid_message", 'name one run ("run_id") or every run ("runs": "*")')
        if has_runs:
            if message["runs"] != "*":
                raise BadMessage("invalid_message", '"runs" takes "*": every run of the organization')
            await (self._subscribe_rows() if action == "subscribe" else self._unsubscribe_rows())
            return
        run_id = message["run_id"]
        # fullmatch: `$` would let a trailing newline through, into a group name.
        if not isinstance(run_id, str) or not run_id_valid(run_id):
            raise BadMessage(
                "invalid_run_id",
                "a run id is 1 to 64 letters, digits, '_' or '-', starting with a letter or digit",
            )
        if action == "unsubscribe":
            await self._unsubscribe_run(run_id)
            return
        after_seq = message.get("after_seq")
        if after_seq is not None and (type(after_seq) is not int or not -1 <= after_seq <= MAX_SEQ):
            raise BadMessage("invalid_after_seq", f"after_seq is an integer from -1 to {MAX_SEQ}")
        await self._subscribe_run(run_id, after_seq)

    async def _subscribe_run(self, run_id: str, after_seq: int | None) -> None:
        assert self.identity is not None
        if run_id not in self.runs and len(self.runs) >= MAX_RUN_SUBSCRIPTIONS:
            raise BadMessage(
                "too_many_subscriptions", f"one socket follows at most {MAX_RUN_SUBSCRIPTIONS} runs"
            )
        # Subscribing again starts again, from its own after_seq.
        subscription = RunSubscription(group=live_run_group(self.identity.tenant.pk, run_id))
        self.runs[run_id] = subscription
        # Join, then read: whatever is committed from now on reaches the group, and waits in the
        # subscription; whatever was committed before is in the read.
        await self._join(subscription.group)
        try:
            if after_seq is None:
                subscription.next_seq = await database_sync_to_async(_stored_next_seq)(self.identity, run_id)
            else:
                subscription.next_seq = after_seq + 1
            ack = {"type": "subscribed", "run_id": run_id}
            await self._catch_up(run_id, subscription, read_first=after_seq is not None, ack=ack)
        except DatabaseError:
            logger.warning("live subscription to %s failed", run_id, exc_info=True)
            if self.runs.get(run_id) is subscription:
                del self.runs[run_id]
                await self._leave(subscription.group)
            raise BadMessage(
                "unavailable", f"run {run_id} cannot be read right now; subscribe again"
            ) from None

    async def _unsubscribe_run(self, run_id: str) -> None:
        subscription = self.runs.pop(run_id, None)
        if subscription is not None:
            await self._leave(subscription.group)
        await self._send_json({"type": "unsubscribed", "run_id": run_id})

    async def _subscribe_rows(self) -> None:
        assert self.identity is not None
        self.history = live_runs_group(self.identity.tenant.pk)
        await self._join(self.history)
        await self._send_json({"type": "subscribed", "runs": "*"})

    async def _unsubscribe_rows(self) -> None:
        if self.history is not None:
            await self._leave(self.history)
            self.history = None
        await self._send_json({"type": "unsubscribed", "runs": "*"})

    # ------------------------------------------------------------ from the relay

    async def relay_message(self, message: dict[str, Any]) -> None:
        """Called by the process's relay for every message to a group this socket joined: quick,
        so as not to hold up the sockets after it."""
        kind = message["type"]
        if kind == "live.events":
            await self._live_events(message)
        elif kind == "live.runs":
            await self._live_rows(message)
        elif kind == "live.close" and self.identity is not None:
            self.identity = None
            await self.close(code=message["code"], reason=message["reason"])

    async def _live_events(self, message: dict[str, Any]) -> None:
        run_id = message["run_id"]
        subscription = self.runs.get(run_id)
        if subscription is None:
            return
        if subscription.catching_up:
            subscription.waiting.append(message)
        elif not await self._send_in_order(run_id, subscription, message):
            subscription.catching_up = True
            subscription.waiting.append(message)
            self._spawn(self._catch_up_after_gap(run_id, subscription))

    async def _live_rows(self, message: dict[str, Any]) -> None:
        if self.history is None:
            return
        for row in message["rows"]:
            known = self.row_versions.get(row["run_id"])
            if known is not None and row["version"] <= known:
                continue  # an older row, overtaken by one already sent
            self.row_versions[row["run_id"]] = row["version"]
            await self.send(text_data=f'{{"type":"run","run":{row["row"]}}}')

    # ------------------------------------------------------------ one subscription's order

    async def _send_in_order(
        self, run_id: str, subscription: RunSubscription, message: dict[str, Any]
    ) -> bool:
        """Sends what a live message adds after the next seq; False when it cannot: it starts
        beyond it (a gap), or is a notice without events."""
        end = message["next_seq"]
        if end <= subscription.next_seq:
            return True  # all of it sent already
        first, events = message["first_seq"], message["events"]
        if events is None or first > subscription.next_seq:
            return False
        fresh = events[subscription.next_seq - first :]
        subscription.next_seq = end
        await self._send_events(run_id, fresh)
        return True

    async def _catch_up(
        self,
        run_id: str,
        subscription: RunSubscription,
        *,
        read_first: bool = True,
        ack: dict[str, Any] | None = None,
    ) -> None:
        """Sends from the database what the subscription lacks, then the live messages that waited
        meanwhile; again while they leave a gap. Live once nothing waits (after the ack, if any)."""
        read = read_first
        while self.runs.get(run_id) is subscription:
            if read:
                subscription.next_seq = await self._send_stored(run_id, subscription.next_seq)
            waiting, subscription.waiting = subscription.waiting, []
            read = False
            for message in waiting:
                if not await self._send_in_order(run_id, subscription, message):
                    read = True  # still a gap: committed after the read began; read again
            if read or subscription.waiting:
                continue
            if ack is not None:
                await self._send_json({**ack, "next_seq": subscription.next_seq})
                ack = None
                continue  # messages may have come while the ack was sent
            subscription.catching_up = False
            return

    async def _catch_up_after_gap(self, run_id: str, subscription: RunSubscription) -> None:
        try:
            await self._catch_up(run_id, subscription)
        except DatabaseError:
            # Live again from the same seq: the next message finds the gap and tries again.
            logger.warning("live events of %s could not be read", run_id, exc_info=True)
            subscription.waiting.clear()
            subscription.catching_up = False

    # ------------------------------------------------------------ helpers of this socket

    async def _send_stored(self, run_id: str, from_seq: int) -> int:
        """Sends the stored events from `from_seq` on, page by page; returns the seq after the last."""
        assert self.identity is not None
        while True:
            page = await database_sync_to_async(_stored_events)(self.identity, run_id, from_seq - 1)
            if page:
                await self._send_events(run_id, [text for _seq, text in page])
                from_seq = page[-1][0] + 1
            if len(page) < EVENTS_PER_FRAME:
                return from_seq

    async def _send_events(self, run_id: str, texts: list[str]) -> None:
        prefix = f'{{"type":"events","run_id":{orjson.dumps(run_id).decode()},"events":['
        for start in range(0, len(texts), EVENTS_PER_FRAME):
            await self.send(text_data=prefix + ",".join(texts[start : start + EVENTS_PER_FRAME]) + "]}")

    # AsyncWebsocketConsumer's own signature, which its stubs give only to the raw message's `send`.
    async def send(  # type: ignore[override]
        self, text_data: str | None = None, bytes_data: bytes | None = None, close: bool = False
    ) -> None:
        metrics.LIVE_MESSAGES.inc()
        await super().send(text_data=text_data, bytes_data=bytes_data, close=close)

    async def _send_json(self, message: dict[str, Any]) -> None:
        await self.send(text_data=orjson.dumps(message).decode())

    async def _join(self, group: str) -> None:
        await live_relay().join(group, self)
        self.joined.add(group)

    async def _leave(self, group: str) -> None:
        if group in self.joined and not any(s.group == group for s in self.runs.values()):
            self.joined.discard(group)
            await live_relay().leave(group, self)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _recheck_credential(self) -> None:
        while True:
            await asyncio.sleep(settings.KAHN_LIVE_RECHECK_SECONDS)
            identity = self.identity
            if identity is None:
                return
            try:
                valid = await database_sync_to_async(socket_identity_still_valid)(identity)
            except DatabaseError:
                logger.warning("a live socket's credential could not be checked", exc_info=True)
                continue
            if not valid:
                self.identity = None
                reason = "the session, API key or access token has ended"
                await self.close(code=SOCKET_UNAUTHENTICATED, reason=reason)
                return
