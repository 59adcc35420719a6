"""/ws/live in process (SPEC section 7): Channels' communicator against the real ASGI application,
with events written by the ingest API and the archive importer through the one write path.

Each test runs its scenario in an event loop of its own (`live`); the Django test client and the
importer run in the test's thread meanwhile, as a server's request threads would, so their commits
publish through the same loop the sockets are served by.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from io import StringIO
from typing import Any

import orjson
import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.core.management import call_command
from django.test import Client
from prometheus_client import REGISTRY

from kahn_site.asgi import application
from runs.live import RunEvents, RunRows, live_run_group
from runs.models import Run
from runs.services import RunBatch
from tenants.context import tenant_atomic
from tests.conftest import write_archive_run

pytestmark = pytest.mark.django_db(transaction=True)

# Now, so that a run without run_end is running, not interrupted.
TS = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
# Receiving waits this long at most: a generous bound for a slow machine, never a measured time.
PATIENCE = 10


def live(scenario: Callable[[], Awaitable[None]]) -> None:
    async_to_sync(scenario)()


def event(seq: int, run_id: str = "run_live") -> dict[str, Any]:
    if seq == 0:
        return {"ts": TS, "event": "run_start", "run_id": run_id}
    return {
        "ts": TS,
        "event": "transition",
        "node": f"n{seq}",
        "from": "pending",
        "to": "running",
        "attempt": 1,
    }


def ndjson(events: list[dict[str, Any]]) -> str:
    return "".join(orjson.dumps(e).decode() + "\n" for e in events)


async def post(run_id: str, first: int, count: int, client: Client | None = None, **headers: str) -> None:
    body = ndjson([event(seq, run_id) for seq in range(first, first + count)])
    response = await sync_to_async((client or Client()).post)(
        f"/api/v1/runs/{run_id}/events", data=body, content_type="application/x-ndjson", headers=headers
    )
    assert response.status_code == 200, response.content


async def connect(**headers: str) -> WebsocketCommunicator:
    # A page of the site itself: its Origin is the origin the handshake came to (Host, scheme ws).
    pairs = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1")] + [
        (k.lower().encode(), v.encode()) for k, v in headers.items()
    ]
    socket = WebsocketCommunicator(application, "/ws/live", headers=pairs)
    connected, _ = await socket.connect(timeout=PATIENCE)
    assert connected
    return socket


async def receive(socket: WebsocketCommunicator) -> dict[str, Any]:
    return await socket.receive_json_from(timeout=PATIENCE)


async def subscribe(socket: WebsocketCommunicator, **message: Any) -> list[dict[str, Any]]:
    """Subscribes; returns the events sent before the `subscribed` acknowledgement."""
    await socket.send_json_to({"action": "subscribe", **message})
    before = []
    while (reply := await receive(socket))["type"] != "subscribed":
        assert reply["type"] == "events", reply
        before.extend(reply["events"])
    return before


async def events_until(socket: WebsocketCommunicator, next_seq: int) -> list[int]:
    """The seqs of events received until the one before `next_seq` has come."""
    seqs: list[int] = []
    while not seqs or seqs[-1] < next_seq - 1:
        message = await receive(socket)
        assert message["type"] == "events", message
        seqs.extend(e["seq"] for e in message["events"])
    return seqs


def test_events_posted_over_http_reach_a_subscriber_in_order(local_tenant):
    async def scenario():
        socket = await connect()
        assert await subscribe(socket, run_id="run_live", after_seq=-1) == []
        await post("run_live", 0, 3)
        message = await receive(socket)
        assert message == {
            "type": "events",
            "run_id": "run_live",
            "events": [{**event(seq), "seq": seq} for seq in range(3)],
        }
        await post("run_live", 3, 2)
        assert await events_until(socket, 5) == [3, 4]
        assert await socket.receive_nothing()
        await socket.disconnect()

    live(scenario)


def test_the_operators_metrics_count_open_sockets_and_the_messages_sent(local_tenant):
    def value(name: str) -> float:
        return REGISTRY.get_sample_value(name) or 0

    async def scenario():
        sockets, messages = value("kahn_live_sockets"), value("kahn_live_messages_total")
        socket = await connect()
        other = await connect()
        assert value("kahn_live_sockets") == sockets + 2
        await subscribe(socket, run_id="run_live", after_seq=-1)  # one message: subscribed
        await post("run_live", 0, 3)
        await events_until(socket, 3)  # one more: the three events in one frame
        assert value("kahn_live_messages_total") == messages + 2
        await socket.disconnect()
        await other.disconnect()
        assert value("kahn_live_sockets") == sockets

    live(scenario)


def test_after_seq_sends_what_is_stored_then_what_comes(local_tenant):
    async def scenario():
        await post("run_live", 0, 5)
        socket = await connect()
        stored = await subscribe(socket, run_id="run_live", after_seq=1)
        assert [e["seq"] for e in stored] == [2, 3, 4]
        assert stored[0] == {**event(2), "seq": 2}
        await post("run_live", 5, 1)
        assert await events_until(socket, 6) == [5]
        await socket.disconnect()

    live(scenario)


def test_without_after_seq_only_new_events_come(local_tenant):
    async def scenario():
        await post("run_live", 0, 4)
        socket = await connect()
        await socket.send_json_to({"action": "subscribe", "run_id": "run_live"})
        assert await receive(socket) == {"type": "subscribed", "run_id": "run_live", "next_seq": 4}
        await post("run_live", 4, 1)
        assert await events_until(socket, 5) == [4]
        await socket.disconnect()

    live(scenario)


def test_a_run_not_started_yet_can_be_followed_from_its_first_event(local_tenant):
    async def scenario():
        socket = await connect()
        await socket.send_json_to({"action": "subscribe", "run_id": "run_later"})
        assert await receive(socket) == {"type": "subscribed", "run_id": "run_later", "next_seq": 0}
        await post("run_later", 0, 2)
        assert await events_until(socket, 2) == [0, 1]
        await socket.disconnect()

    live(scenario)


def test_history_subscribers_get_each_changed_row_as_the_api_shows_it(local_tenant):
    async def scenario():
        socket = await connect()
        assert await subscribe(socket, runs="*") == []
        await post("run_live", 0, 2)
        message = await receive(socket)
        assert message["type"] == "run"
        api_rows = (await sync_to_async(Client().get)("/api/v1/runs/")).json()["results"]
        assert message["run"] == next(row for row in api_rows if row["run_id"] == "run_live")
        assert message["run"]["status"] == "running"

        end = {"ts": TS, "event": "run_end", "exit_code": 0}
        response = await sync_to_async(Client().post)(
            "/api/v1/runs/run_live/events", data=ndjson([end]), content_type="application/x-ndjson"
        )
        assert response.status_code == 200
        message = await receive(socket)
        assert message["run"]["status"] == "complete" and message["run"]["outcome"] is not None
        await socket.disconnect()

    live(scenario)


def test_an_archive_import_reaches_subscribers_through_the_same_path(local_tenant, tmp_path):
    events = [event(seq, "run_archived") for seq in range(4)]
    write_archive_run(tmp_path, "run_archived", events[:2])

    async def scenario():
        socket = await connect()
        await subscribe(socket, run_id="run_archived", after_seq=-1)
        await subscribe(socket, runs="*")
        await sync_to_async(call_command)("ingest_archive", str(tmp_path), stdout=StringIO())
        # The row and the events travel in two groups: either may come first.
        first, second = await receive(socket), await receive(socket)
        by_type = {first["type"]: first, second["type"]: second}
        assert [e["seq"] for e in by_type["events"]["events"]] == [0, 1]
        assert by_type["run"]["run"]["run_id"] == "run_archived"

        with open(tmp_path / "runs" / "run_archived" / "transitions.jsonl", "a") as log:
            log.write(ndjson(events[2:]))
        await sync_to_async(call_command)("ingest_archive", str(tmp_path), stdout=StringIO())
        seqs = []
        while len(seqs) < 2:
            message = await receive(socket)
            if message["type"] == "events":
                seqs += [e["seq"] for e in message["events"]]
        assert seqs == [2, 3]
        await socket.disconnect()

    live(scenario)


def test_unsubscribing_stops_a_runs_events(local_tenant):
    async def scenario():
        socket = await connect()
        await subscribe(socket, run_id="run_live", after_seq=-1)
        await subscribe(socket, runs="*")
        await socket.send_json_to({"action": "unsubscribe", "run_id": "run_live"})
        assert await receive(socket) == {"type": "unsubscribed", "run_id": "run_live"}
        await socket.send_json_to({"action": "unsubscribe", "runs": "*"})
        assert await receive(socket) == {"type": "unsubscribed", "runs": "*"}
        await post("run_live", 0, 2)
        assert await socket.receive_nothing(timeout=0.5)
        await socket.disconnect()

    live(scenario)


BAD_MESSAGES = [
    ("not json", "invalid_json"),
    ("[1, 2]", "invalid_message"),
    ('"subscribe"', "invalid_message"),
    ("{}", "unknown_action"),
    ('{"action": "watch", "run_id": "run_live"}', "unknown_action"),
    ('{"action": "subscribe"}', "invalid_message"),
    ('{"action": "subscribe", "run_id": "run_live", "runs": "*"}', "invalid_message"),
    ('{"action": "subscribe", "runs": "run_live"}', "invalid_message"),
    ('{"action": "subscribe", "run_id": "../etc"}', "invalid_run_id"),
    ('{"action": "subscribe", "run_id": 42}', "invalid_run_id"),
    ('{"action": "subscribe", "run_id": ""}', "invalid_run_id"),
    ('{"action": "subscribe", "run_id": "run\\u0000x"}', "invalid_run_id"),
    # A group name is built from it: a trailing newline, which `$` would let through, is refused.
    ('{"action": "subscribe", "run_id": "run_live\\n"}', "invalid_run_id"),
    ('{"action": "subscribe", "run_id": "run_live", "after_seq": "3"}', "invalid_after_seq"),
    ('{"action": "subscribe", "run_id": "run_live", "after_seq": -2}', "invalid_after_seq"),
    ('{"action": "subscribe", "run_id": "run_live", "after_seq": 1.5}', "invalid_after_seq"),
    ('{"action": "subscribe", "run_id": "run_live", "after_seq": true}', "invalid_after_seq"),
    ('{"action": "subscribe", "run_id": "run_live", "after_seq": 99999999999}', "invalid_after_seq"),
    (json.dumps({"action": "subscribe", "run_id": "run_live", "pad": "x" * 5000}), "message_too_large"),
]


def test_bad_messages_get_an_error_and_the_socket_stays_open(local_tenant):
    async def scenario():
        socket = await connect()
        for text, code in BAD_MESSAGES:
            await socket.send_to(text_data=text)
            reply = await receive(socket)
            assert (reply["type"], reply["code"]) == ("error", code), text
            assert reply["message"]
        await socket.send_to(bytes_data=b'{"action": "subscribe", "runs": "*"}')
        assert (await receive(socket))["code"] == "invalid_message"
        # Still open, still serving.
        await post("run_live", 0, 1)
        assert await subscribe(socket, run_id="run_live", after_seq=-1) == [{**event(0), "seq": 0}]
        await socket.disconnect()

    live(scenario)


def test_one_socket_follows_at_most_a_hundred_runs(local_tenant):
    async def scenario():
        socket = await connect()
        for n in range(100):
            await socket.send_json_to({"action": "subscribe", "run_id": f"run_{n}"})
            assert (await receive(socket))["type"] == "subscribed"
        await socket.send_json_to({"action": "subscribe", "run_id": "run_100"})
        assert (await receive(socket))["code"] == "too_many_subscriptions"
        # Subscribing again to a followed run is no new subscription.
        await socket.send_json_to({"action": "subscribe", "run_id": "run_7"})
        assert (await receive(socket))["type"] == "subscribed"
        await socket.disconnect()

    live(scenario)


def test_events_a_socket_missed_are_read_from_the_database(local_tenant):
    """A message lost on the way (full channel) or never sent: the next one shows the gap, and the
    socket reads it from the database before sending on."""

    async def scenario():
        socket = await connect()
        await subscribe(socket, run_id="run_live", after_seq=-1)
        await post("run_live", 0, 2)
        assert await events_until(socket, 2) == [0, 1]

        def write_without_publishing() -> None:
            # RunBatch alone, outside the services that publish: stored, and no message about it.
            with tenant_atomic(local_tenant):
                batch = RunBatch(tenant=local_tenant)
                change = batch.open(["run_live"])["run_live"]
                for seq in (2, 3, 4):
                    change.append(event(seq), orjson.dumps(event(seq)).decode())
                batch.flush()

        await sync_to_async(write_without_publishing)()
        assert await socket.receive_nothing(timeout=0.3)
        await post("run_live", 5, 1)
        assert await events_until(socket, 6) == [2, 3, 4, 5]
        await socket.disconnect()

    live(scenario)


def test_a_batch_too_long_for_one_message_is_read_from_the_database(local_tenant):
    async def scenario():
        socket = await connect()
        await subscribe(socket, run_id="run_live", after_seq=-1)
        await post("run_live", 0, 1000)
        assert await events_until(socket, 1000) == list(range(1000))
        await socket.disconnect()

    live(scenario)


def test_messages_overtaken_by_later_ones_are_not_sent_again(local_tenant):
    async def scenario():
        socket = await connect()
        await subscribe(socket, run_id="run_live", after_seq=-1)
        await post("run_live", 0, 4)
        assert await events_until(socket, 4) == [0, 1, 2, 3]
        # A writer's message arriving after a later writer's: its events were sent already.
        late = RunEvents(
            group=live_run_group(local_tenant.pk, "run_live"),
            run_id="run_live",
            first_seq=2,
            next_seq=4,
            payloads=tuple(orjson.dumps(event(seq)).decode() for seq in (2, 3)),
        )
        await get_channel_layer().group_send(late.group, {**late.message(), "group": late.group})
        assert await socket.receive_nothing(timeout=0.3)
        await post("run_live", 4, 1)
        assert await events_until(socket, 5) == [4]
        await socket.disconnect()

    live(scenario)


def test_a_handshake_from_another_sites_page_is_refused(local_tenant):
    async def scenario():
        socket = WebsocketCommunicator(
            application, "/ws/live", headers=[(b"origin", b"https://evil.example")]
        )
        connected, _ = await socket.connect(timeout=PATIENCE)
        assert not connected
        without_origin = WebsocketCommunicator(application, "/ws/live")
        connected, _ = await without_origin.connect(timeout=PATIENCE)
        assert not connected

    live(scenario)


# ---------------------------------------------------------------- merging while a group is busy


def _events(first: int, count: int | None) -> RunEvents:
    payloads = None if count is None else tuple(f'{{"n":{first + i}}}' for i in range(count))
    return RunEvents(group="g", run_id="r", first_seq=first, next_seq=first + (count or 5), payloads=payloads)


def test_contiguous_batches_merge_into_one_message_whatever_order_their_hooks_ran_in():
    merged = _events(3, 2).merged_with(_events(0, 3))
    assert (merged.first_seq, merged.next_seq) == (0, 5)
    assert [json.loads(e)["seq"] for e in merged.message()["events"]] == [0, 1, 2, 3, 4]
    assert [json.loads(e)["n"] for e in merged.message()["events"]] == [0, 1, 2, 3, 4]


def test_batches_with_a_gap_or_too_many_events_merge_into_a_notice():
    gap = _events(0, 2).merged_with(_events(5, 2))
    assert (gap.first_seq, gap.next_seq, gap.payloads) == (0, 7, None)
    assert gap.message()["events"] is None
    long = _events(0, 400).merged_with(_events(400, 200))
    assert (long.first_seq, long.next_seq, long.payloads) == (0, 600, None)
    notice = _events(0, None).merged_with(_events(5, 1))
    assert (notice.first_seq, notice.next_seq, notice.payloads) == (0, 6, None)


def test_rows_merge_to_the_newest_of_each_run(local_tenant):
    async def scenario():
        await post("run_a", 0, 1)
        await post("run_b", 0, 1)

    live(scenario)
    with tenant_atomic(local_tenant):
        older_a, run_b = Run.objects.get(run_id="run_a"), Run.objects.get(run_id="run_b")
    async_to_sync(post)("run_a", 1, 1)
    with tenant_atomic(local_tenant):
        newer_a = Run.objects.get(run_id="run_a")
    merged = RunRows(group="g", runs={"run_a": newer_a}).merged_with(
        RunRows(group="g", runs={"run_a": older_a, "run_b": run_b})
    )
    assert merged.runs == {"run_a": newer_a, "run_b": run_b}
    assert merged.runs["run_a"].next_seq == 2
