"""`/ws/live` (SPEC section 7): a run's events and the tenant's history rows, as they are committed.

Client → server: `{"action": "subscribe" | "unsubscribe", "run_id": "...", "after_seq": n}` or
`{"action": ..., "runs": "*"}`. Server → client: `events`, `run` and `error` messages, and
`subscribed` / `unsubscribed` once a (un)subscription is in effect (`subscribed` carries
`next_seq`, the seq of the next event the socket will send for the run).

Gapless resume: a subscription joins the run's group first, then sends what the database holds
after `after_seq`, then live events. Messages are handled one at a time, so live events that arrive
during the read wait, and are then cut to what the read did not send: nothing twice, nothing
missed. Each subscription keeps the seq it will send next; a live message that starts beyond it (one
dropped by a full channel, or overtaken by a later writer's) or carries no events (a notice of a
large batch) makes it read the gap from the database, which has every committed event.

A bad message from the client gets an `error` message; it never closes the socket.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import orjson
from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError

from kahn_site.live import SOCKET_UNAUTHENTICATED
from runs.live import event_text, live_run_group, live_runs_group
from runs.selectors import RUN_ID_PATTERN, run_events_after, run_stored_next_seq
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
    next_seq: int


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
    async def connect(self) -> None:
        self.identity: SocketIdentity | None = None
        self.runs: dict[str, RunSubscription] = {}
        self.history: str | None = None  # the tenant's rows group, while subscribed to "*"
        self.row_versions: dict[str, list[float]] = {}
        self.joined: set[str] = set()
        self.recheck: asyncio.Task[None] | None = None
        found = await database_sync_to_async(socket_identity)(self.scope)
        # Accepted first, then closed: a close code reaches the client only after the handshake.
        await self.accept()
        if isinstance(found, SocketRefusal):
            await self.close(code=found.code, reason=found.reason)
            return
        self.identity = found
        for group in found.credential_groups:
            await self._join(group)
        if found.credential_groups:
            self.recheck = asyncio.create_task(self._recheck_credential())

    async def disconnect(self, code: int) -> None:
        if self.recheck is not None:
            self.recheck.cancel()
        for group in self.joined:
            await self.channel_layer.group_discard(group, self.channel_name)
        self.joined.clear()

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels' own dispatch first closes stale database connections, a hop to the database
        # thread for every message to every socket: with 200 sockets on one run that is most of the
        # delivery time. The handlers here reach the database only through database_sync_to_async,
        # which closes stale connections itself.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"no handler for message type {message['type']}")
        await handler(message)

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
        if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id):
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
        self.runs.pop(run_id, None)  # subscribing again starts again from its own after_seq
        group = live_run_group(self.identity.tenant.pk, run_id)
        # Join, then read: whatever is committed from now on reaches the group, and whatever was
        # committed before is in the read. Live messages wait meanwhile (one handler at a time).
        await self._join(group)
        try:
            if after_seq is None:
                next_seq = await database_sync_to_async(_stored_next_seq)(self.identity, run_id)
            else:
                next_seq = await self._send_stored(run_id, after_seq + 1)
        except DatabaseError:
            logger.warning("live subscription to %s failed", run_id, exc_info=True)
            await self._leave(group)
            raise BadMessage(
                "unavailable", f"run {run_id} cannot be read right now; subscribe again"
            ) from None
        self.runs[run_id] = RunSubscription(group=group, next_seq=next_seq)
        await self._send_json({"type": "subscribed", "run_id": run_id, "next_seq": next_seq})

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

    # ------------------------------------------------------------ from the channel layer

    async def live_events(self, message: dict[str, Any]) -> None:
        run_id = message["run_id"]
        subscription = self.runs.get(run_id)
        if subscription is None or message["next_seq"] <= subscription.next_seq:
            return  # not followed (any more), or all of it already sent
        first, events = message["first_seq"], message["events"]
        if events is None or first > subscription.next_seq:
            try:
                subscription.next_seq = await self._send_stored(run_id, subscription.next_seq)
            except DatabaseError:
                # The next message tries again from the same seq: late, never a gap.
                logger.warning("live events of %s could not be read", run_id, exc_info=True)
            return
        await self._send_events(run_id, events[subscription.next_seq - first :])
        subscription.next_seq = message["next_seq"]

    async def live_runs(self, message: dict[str, Any]) -> None:
        if self.history is None:
            return
        for row in message["rows"]:
            known = self.row_versions.get(row["run_id"])
            if known is not None and row["version"] <= known:
                continue  # an older row, overtaken by one already sent
            self.row_versions[row["run_id"]] = row["version"]
            await self.send(text_data=f'{{"type":"run","run":{row["row"]}}}')

    async def live_close(self, message: dict[str, Any]) -> None:
        self.identity = None
        await self.close(code=message["code"], reason=message["reason"])

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

    async def _send_json(self, message: dict[str, Any]) -> None:
        await self.send(text_data=orjson.dumps(message).decode())

    async def _join(self, group: str) -> None:
        await self.channel_layer.group_add(group, self.channel_name)
        self.joined.add(group)

    async def _leave(self, group: str) -> None:
        self.joined.discard(group)
        await self.channel_layer.group_discard(group, self.channel_name)

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
                await self.close(code=SOCKET_UNAUTHENTICATED, reason="the session or API key has ended")
                return
