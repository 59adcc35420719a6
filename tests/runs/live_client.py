"""A /ws/live client for the tests that talk to a real server: a `websockets` connection that sorts
what it receives (each run's seqs, rows, errors) and can wait for a condition."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import requests
from websockets.asyncio.client import ClientConnection, connect

# Waits are bounded by this; it is a limit against hanging, never a measured time.
PATIENCE = 20.0


def socket_url(base_url: str) -> str:
    return base_url.replace("http://", "ws://", 1) + "/ws/live"


class LiveClient:
    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.seqs: dict[str, list[int]] = defaultdict(list)
        self.rows: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.acks: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, base_url: str, *, key: str | None = None, origin: str | None = None) -> LiveClient:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        connection = await connect(
            socket_url(base_url),
            origin=origin or base_url,
            additional_headers=headers,
            max_size=None,
            open_timeout=PATIENCE,
        )
        return cls(connection)

    async def send(self, message: dict[str, Any]) -> None:
        await self.connection.send(json.dumps(message))

    async def subscribe(self, **message: Any) -> dict[str, Any]:
        """Subscribes and waits for the acknowledgement (events before it are kept, as all are)."""
        await self.send({"action": "subscribe", **message})
        acks = len(self.acks)
        await self.until(lambda: len(self.acks) > acks)
        return self.acks[-1]

    async def receive(self, timeout: float = PATIENCE) -> dict[str, Any]:
        message = json.loads(await asyncio.wait_for(self.connection.recv(), timeout))
        kind = message["type"]
        if kind == "events":
            self.seqs[message["run_id"]].extend(event["seq"] for event in message["events"])
        elif kind == "run":
            self.rows.append(message["run"])
        elif kind == "error":
            self.errors.append(message)
        else:
            self.acks.append(message)
        return message

    async def until(self, condition: Callable[[], bool], timeout: float = PATIENCE) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            await self.receive(timeout=max(0.0, deadline - loop.time()))

    async def quiet_for(self, seconds: float) -> bool:
        """True if nothing arrives for `seconds`."""
        try:
            await self.receive(timeout=seconds)
        except TimeoutError:
            return True
        return False

    async def close(self) -> None:
        await self.connection.close()


def post_events(
    base_url: str,
    run_id: str,
    events: list[dict[str, Any]],
    *,
    key: str | None = None,
    first_seq: int | None = None,
) -> dict[str, Any]:
    """POSTs a batch as NDJSON (with `seq` when `first_seq` is given); returns the receipt."""
    if first_seq is not None:
        events = [{**event, "seq": first_seq + i} for i, event in enumerate(events)]
    body = "".join(json.dumps(event) + "\n" for event in events)
    headers = {"Content-Type": "application/x-ndjson"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    response = requests.post(
        f"{base_url}/api/v1/runs/{run_id}/events", data=body, headers=headers, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()
