"""Benchmark: /ws/live delivery from one daphne process in cloud mode (Redis), against its floor.

Run by hand (not collected by pytest):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/kahn_bench_live .venv/bin/python tests/bench/bench_live.py

It (re)creates the database named in DATABASE_URL, makes a tenant and an API key, starts
`manage.py serve --mode cloud` (one process, REDIS_URL or redis://127.0.0.1:6379/12) and, from this
process, with `websockets` clients, measures in the same run:

  floor    bare channel layer: `group_send` of one event straight to the run's group, from here
           through Redis to the server, then its socket, to each subscriber (the consumer forwards it
           as it comes); latency from just before group_send to each subscriber's receipt;
  POST     one event per POST to /api/v1/runs/{id}/events, one every --spacing seconds; latency
           from the POST's response (in this process) to each subscriber's receipt. The server
           publishes after commit, before it answers, so a receipt can come first: negative values
           are kept, as measured;
  loss     --rate events/s for --seconds seconds (POSTs of --batch events from --posters threads,
           without seq, so the server orders them), with every subscriber counting what it got:
           each must end with seqs 0..N-1, each once.

with 1 and with --subscribers (default 200) sockets on the one server process.

Targets (issue 6): POST p99 ≤ 2 x the floor's p99 with 1 subscriber; p99 ≤ 50 ms with 200; no
message lost at 300 events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT))

from tests.bench.bench_database import bench_database_url, recreate_database  # noqa: E402 (needs the path above)
from tests.servers import ServerDidNotStart, served  # noqa: E402

PREFIX = f"kahn-bench-{uuid.uuid4().hex[:8]}"
PEPPER = "bench-live-pepper-" + uuid.uuid4().hex
SECRET = "bench-live-secret-" + "x" * 40


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--samples", type=int, default=150, help="events per latency measurement")
    parser.add_argument("--spacing", type=float, default=0.1, help="seconds between latency probes")
    parser.add_argument("--rate", type=int, default=300, help="events per second in the loss test")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the loss test")
    parser.add_argument("--batch", type=int, default=10, help="events per POST in the loss test")
    parser.add_argument("--posters", type=int, default=4, help="concurrent POSTing threads in the loss test")
    args = parser.parse_args()

    url = bench_database_url("bench_live")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/12")
    recreate_database(url)
    os.environ.update({"KAHN_API_KEY_PEPPER": PEPPER, "DJANGO_SETTINGS_MODULE": "kahn_site.settings"})
    os.environ.pop("KAHN_MODE", None)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    tenant, key = make_tenant_and_key()
    try:
        with served(cloud_env(url, redis_url), "--host", "127.0.0.1") as server:
            results = asyncio.run(measure(args, server.url, key, tenant.pk, redis_url))
            output = server.output()
    except ServerDidNotStart as failure:
        sys.exit(f"bench_live: {failure}")
    report(args, results, output)


# ---------------------------------------------------------------- setting up


def make_tenant_and_key():
    from tenants.services import api_key_create, tenant_create

    tenant = tenant_create(slug="bench", name="Bench")
    return tenant, api_key_create(tenant=tenant, name="bench")[1]


def cloud_env(url: str, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAHN_", "DJANGO_", "DATABASE_"))}
    oidc = {
        name: "http://127.0.0.1:9/oidc"
        for name in (
            "OIDC_RP_CLIENT_ID",
            "OIDC_RP_CLIENT_SECRET",
            "OIDC_OP_AUTHORIZATION_ENDPOINT",
            "OIDC_OP_TOKEN_ENDPOINT",
            "OIDC_OP_USER_ENDPOINT",
            "OIDC_OP_JWKS_ENDPOINT",
        )
    }
    return {
        **env,
        **oidc,
        "KAHN_MODE": "cloud",
        "DATABASE_URL": url,
        "REDIS_URL": redis_url,
        "DJANGO_SECRET_KEY": SECRET,
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "KAHN_API_KEY_PEPPER": PEPPER,
        "KAHN_LIVE_REDIS_PREFIX": PREFIX,
        # The plan's rate limit would cap the loss test; it is not what is measured here.
        "KAHN_RATE_LIMITS": "false",
    }


# ---------------------------------------------------------------- measuring


def event(seq: int | None, run_id: str) -> dict:
    """run_start, then one node started, then that node "still running" again and again: events
    the reduction takes without a diagnostic, in any order, and with a state that does not grow."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if seq == 0:
        return {"ts": now, "event": "run_start", "run_id": run_id}
    source = "pending" if seq == 1 else "running"
    return {"ts": now, "event": "transition", "node": "probe", "from": source, "to": "running", "attempt": 1}


class Subscribers:
    """N sockets on one run: when each seq reached each socket, and how many frames it took."""

    def __init__(self, connections: list, run_id: str) -> None:
        self.connections = connections
        self.run_id = run_id
        self.received: list[dict[int, float]] = [{} for _ in connections]
        self.duplicates = 0
        self.frames = [0] * len(connections)
        self.tasks: list[asyncio.Task] = []

    @classmethod
    async def open(cls, base: str, key: str, count: int, run_id: str) -> Subscribers:
        import websockets

        url = base.replace("http://", "ws://") + "/ws/live"
        connections = []
        for start in range(0, count, 50):  # a handful of handshakes at a time
            connections += await asyncio.gather(
                *(
                    websockets.connect(
                        url, origin=base, additional_headers={"Authorization": f"Bearer {key}"}, max_size=None
                    )
                    for _ in range(min(50, count - start))
                )
            )
        subscribers = cls(connections, run_id)
        for connection in connections:
            await connection.send(json.dumps({"action": "subscribe", "run_id": run_id}))
            reply = json.loads(await connection.recv())
            assert reply["type"] == "subscribed", reply
        subscribers.tasks = [asyncio.create_task(subscribers._read(i)) for i in range(count)]
        return subscribers

    async def _read(self, index: int) -> None:
        received, connection = self.received[index], self.connections[index]
        async for frame in connection:
            now = time.perf_counter()
            message = json.loads(frame)
            if message["type"] != "events":
                continue
            self.frames[index] += 1
            for item in message["events"]:
                if item["seq"] in received:
                    self.duplicates += 1
                received[item["seq"]] = now

    async def wait_for(self, seqs: range, patience: float = 30.0) -> None:
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            if all(all(s in got for s in seqs) for got in self.received):
                return
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*(c.close() for c in self.connections), return_exceptions=True)


def post(base: str, key: str, run_id: str, events: list[dict], seq: int | None = None) -> None:
    if seq is not None:
        events = [{**e, "seq": seq + i} for i, e in enumerate(events)]
    body = "".join(json.dumps(e) + "\n" for e in events)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/x-ndjson"}
    response = SESSION.get().post(
        f"{base}/api/v1/runs/{run_id}/events", data=body, headers=headers, timeout=30
    )
    if response.status_code != 200:
        raise RuntimeError(f"POST {run_id}: {response.status_code} {response.text[:300]}")


class _Sessions(threading.local):
    def get(self):
        import requests

        if not hasattr(self, "session"):
            self.session = requests.Session()
        return self.session


SESSION = _Sessions()


async def floor(
    base: str, key: str, tenant_id: int, redis_url: str, count: int, samples: int, spacing: float
):
    """group_send straight into the run's group, through Redis, to the server's sockets."""
    from channels_redis.core import RedisChannelLayer
    from django.conf import settings

    from runs.live import event_text, live_run_group

    run_id = f"floor_{count}"
    layer = RedisChannelLayer(
        hosts=[{"address": redis_url, "socket_timeout": None}],
        prefix=PREFIX,
        capacity=settings.LIVE_CHANNEL_CAPACITY,
    )
    subscribers = await Subscribers.open(base, key, count, run_id)
    group, sent = live_run_group(tenant_id, run_id), {}
    for seq in range(samples):
        text = event_text(json.dumps(event(seq, run_id)), seq)
        message = {
            "type": "live.events",
            "group": group,
            "run_id": run_id,
            "first_seq": seq,
            "next_seq": seq + 1,
            "events": [text],
        }
        sent[seq] = time.perf_counter()
        await layer.group_send(group, message)
        await asyncio.sleep(spacing)
    await subscribers.wait_for(range(samples))
    await subscribers.close()
    await layer.close_pools()
    return latencies(subscribers, sent)


async def posted(base: str, key: str, count: int, samples: int, spacing: float):
    """One event per POST; latency from the response to each receipt."""
    run_id = f"posted_{count}"
    subscribers = await Subscribers.open(base, key, count, run_id)
    answered: dict[int, float] = {}
    for seq in range(samples):
        await asyncio.to_thread(post, base, key, run_id, [event(seq, run_id)], seq)
        answered[seq] = time.perf_counter()
        await asyncio.sleep(spacing)
    await subscribers.wait_for(range(samples))
    await subscribers.close()
    return latencies(subscribers, answered)


def latencies(subscribers: Subscribers, since: dict[int, float]) -> dict:
    values = [(got[seq] - since[seq]) * 1000 for got in subscribers.received for seq in since if seq in got]
    missing = sum(1 for got in subscribers.received for seq in since if seq not in got)
    return {"values": values, "missing": missing, "duplicates": subscribers.duplicates}


async def loss(base: str, key: str, count: int, rate: int, seconds: float, batch: int, posters: int):
    """--rate events/s into one run while `count` sockets follow it; every one must get every event."""
    run_id = f"loss_{count}"
    subscribers = await Subscribers.open(base, key, count, run_id)
    await asyncio.to_thread(post, base, key, run_id, [event(0, run_id), event(1, run_id)], 0)
    total_posts = int(rate * seconds / batch)
    work: queue.Queue[float] = queue.Queue()
    started = time.perf_counter()
    for n in range(total_posts):
        work.put(started + n * batch / rate)  # when each POST is due
    late = [0.0]

    def poster() -> None:
        while True:
            try:
                due = work.get_nowait()
            except queue.Empty:
                return
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            else:
                late[0] = max(late[0], -wait)
            post(base, key, run_id, [event(None, run_id) for _ in range(batch)])

    threads = [threading.Thread(target=poster) for _ in range(posters)]
    for thread in threads:
        thread.start()
    await asyncio.to_thread(lambda: [thread.join() for thread in threads])
    took = time.perf_counter() - started
    total = 2 + total_posts * batch
    await subscribers.wait_for(range(total), patience=30)
    got = [len(received) for received in subscribers.received]
    frames = sum(subscribers.frames) / len(subscribers.frames)
    await subscribers.close()
    return {
        "events": total,
        "achieved": (total - 2) / took,
        "lost": sum(total - g for g in got),
        "short": sum(1 for g in got if g < total),
        "duplicates": subscribers.duplicates,
        "frames": frames,
        "most_behind_s": late[0],
    }


async def measure(args, base: str, key: str, tenant_id: int, redis_url: str) -> dict:
    results = {}
    for count in (1, args.subscribers):
        print(f"{count} subscriber(s): floor ...", flush=True)
        results[("floor", count)] = await floor(
            base, key, tenant_id, redis_url, count, args.samples, args.spacing
        )
        print(f"{count} subscriber(s): POST ...", flush=True)
        results[("post", count)] = await posted(base, key, count, args.samples, args.spacing)
        print(f"{count} subscriber(s): {args.rate} events/s for {args.seconds} s ...", flush=True)
        results[("loss", count)] = await loss(
            base, key, count, args.rate, args.seconds, args.batch, args.posters
        )
    return results


# ---------------------------------------------------------------- reporting


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def report(args, results: dict, output: str) -> None:
    print()
    print("latency, ms (one daphne process, cloud mode: Redis and PostgreSQL, all on this machine)")
    print(f"{'':<40}{'p50':>8}{'p99':>8}{'samples':>9}{'missing':>9}")
    p99 = {}
    for count in (1, args.subscribers):
        for kind, label in (("floor", "group_send → socket (floor)"), ("post", "POST response → socket")):
            result = results[(kind, count)]
            values = result["values"]
            p50, p99[(kind, count)] = percentile(values, 0.5), percentile(values, 0.99)
            name = f"{label}, {count} sub"
            print(f"{name:<40}{p50:>8.2f}{p99[(kind, count)]:>8.2f}{len(values):>9}{result['missing']:>9}")
    print()
    for count in (1, args.subscribers):
        result = results[("loss", count)]
        print(
            f"{args.rate} events/s asked, {result['achieved']:.0f} achieved ({args.batch} per POST, "
            f"{args.posters} posters), {count} sub: {result['events']} events, lost {result['lost']} "
            f"({result['short']} sockets short), duplicates {result['duplicates']}, "
            f"{result['frames']:.0f} frames per socket"
        )
    print()
    ratio = p99[("post", 1)] / p99[("floor", 1)]
    verdict(f"POST p99 ≤ 2 x floor p99 with 1 subscriber: {ratio:.2f} x", ratio <= 2)
    many = p99[("post", args.subscribers)]
    verdict(f"POST p99 ≤ 50 ms with {args.subscribers} subscribers: {many:.1f} ms", many <= 50)
    lost = sum(
        results[("loss", c)]["lost"] + results[("loss", c)]["duplicates"] for c in (1, args.subscribers)
    )
    verdict(f"nothing lost or doubled at {args.rate} events/s: {lost}", lost == 0)
    errors = [line for line in output.splitlines() if "Traceback" in line or "ERROR" in line]
    if errors:
        print(f"server log: {len(errors)} error lines, e.g. {errors[0]}")


def verdict(text: str, ok: bool) -> None:
    print(f"{'MET ' if ok else 'MISSED'}  {text}")


if __name__ == "__main__":
    main()
