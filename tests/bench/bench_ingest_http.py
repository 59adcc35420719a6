"""Benchmark: events/s through the HTTP ingest API as deployed, against floors measured in the same run.

Run by hand (not collected by pytest), with PostgreSQL, Redis and wrk (`apt-get install wrk`):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/kahn_bench_http \\
        .venv/bin/python tests/bench/bench_ingest_http.py

It (re)creates the database named in DATABASE_URL, migrates it, and makes what cloud mode runs with:
a service role that owns nothing and is subject to row-level security, a tenant on a plan whose rate
never refuses (the limit is still counted in Redis on every request), and an API key. Then, for each
way of serving (`--servers`: `daphne` is `manage.py serve` as the README deploys it, one ASGI process;
`gunicorn-N` is `manage.py serve --http-workers N`, HTTP on N WSGI sync workers beside daphne for
WebSocket), it starts the server in cloud mode as the service role and drives it with wrk (2 threads,
16 connections), measuring:

  floor view  a minimal Django view behind the same server, settings and middleware, that parses one
              event and stores it with one INSERT (tests/bench/floor_urls.py);
  round trips the floor view plus, doing nothing, the round trips to PostgreSQL and the cache that a
              single event's request makes beyond the floor's: the most that request could reach
              with them, whatever its work cost;
  single      POST /api/v1/runs/{run_id}/events with one event per request;
  batch       the same with 500 events per request (NDJSON).

and, just before the batches, the raw COPY of their own rows into a table made LIKE runs_event, with
no HTTP, no Django and no row-level security: what PostgreSQL alone costs for those rows.

Producers' runs follow a KAHN run's shape: run_start with a graph of 40 nodes, then each node's
attempts (transition to running, node_attempt, transition to failed) round after round; every run is
written by one connection at a time, in order, as a producer would.

Targets on this 2-core machine (issue 5): batches ≥ 35 % of the raw COPY rate; single events ≥ 65 %
of the floor view, with p99 ≤ 50 ms at 16 connections. Each rate and p99 in the table is the median
of `--repeat` rounds, and each share the median of the rounds' shares (a measurement over its floor of
the same round); the figures of every round are printed as they come.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT))

from tests.bench.bench_database import bench_database_url, recreate_database  # noqa: E402
from tests.bench.bench_import import copy_floor  # noqa: E402

BATCH_EVENTS = 500
NODES = 40
TS = "2026-11-20T10:00:00.000Z"
# How each way of serving is started: the arguments after `manage.py serve`.
SERVERS = {
    "daphne": [],
    # One worker: what a web worker alone carries, for the README's "Growing".
    "gunicorn-1": ["--http-workers", "1"],
    "gunicorn-2": ["--http-workers", "2"],
    "gunicorn-3": ["--http-workers", "3"],
    "gunicorn-4": ["--http-workers", "4"],
    "gunicorn-6": ["--http-workers", "6"],
}
# The floors first, then what a producer sends.
ENDPOINTS = ("floor", "trips", "single", "batch")
PRODUCER_ENDPOINTS = ("single", "batch")
TARGET_BATCH_SHARE = 0.35
TARGET_SINGLE_SHARE = 0.65
TARGET_SINGLE_P99_MS = 50.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--servers", default="daphne,gunicorn-2,gunicorn-3", help=f"of {', '.join(SERVERS)}")
    parser.add_argument("--duration", type=int, default=10, help="seconds of each measurement")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    servers = args.servers.split(",")
    unknown = [name for name in servers if name not in SERVERS]
    if unknown:
        sys.exit(f"bench_ingest_http: unknown server {', '.join(unknown)} (known: {', '.join(SERVERS)})")
    url = bench_database_url("bench_ingest_http")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("bench_ingest_http: wrk is not installed (apt-get install wrk)")
    check_redis(redis_url)

    recreate_database(url)
    os.environ["DJANGO_SETTINGS_MODULE"] = "kahn_site.settings"
    os.environ["KAHN_MODE"] = "oss"  # this process prepares the database, as its owner
    import django

    django.setup()
    world = prepare_database(url)
    env = server_env(url, world, redis_url)
    rows = batch_rows(runs=200, batches=4)

    figures = Figures()
    with tempfile.TemporaryDirectory(prefix="kahn-bench-") as scratch:
        scripts = write_scripts(Path(scratch), world.key)
        for round_number in range(1, args.repeat + 1):
            # The machine may be shared: its load is printed beside each round's figures.
            print(f"round {round_number}: load average {os.getloadavg()[0]:.2f}", flush=True)
            for name in servers:
                with serving(name, env) as base:
                    for endpoint in ENDPOINTS:
                        if endpoint == "batch":
                            # Beside the batches it is the floor of, not minutes before: how fast this
                            # machine runs moves by a third within the hour.
                            wait_until_idle(world)
                            empty_tables()
                            copy = len(rows) / copy_floor(rows)
                            figures.add(f"{name}/copy", copy, 0.0)
                            print(f"round {round_number}: {name:<11} COPY   {copy:>8,.0f} rows/s", flush=True)
                        prefix = f"r{round_number}{endpoint}"
                        run = measure(wrk, endpoint, scripts[endpoint], base, args, world, prefix)
                        events = run.rate * (BATCH_EVENTS if endpoint == "batch" else 1)
                        figures.add(f"{name}/{endpoint}", events, run.p99_ms)
                        print(
                            f"round {round_number}: {name:<11} {endpoint:<6} {run.rate:>8,.0f} req/s "
                            f"{events:>10,.0f} events/s  p50 {run.p50_ms:6.1f} ms  p99 {run.p99_ms:6.1f} ms",
                            flush=True,
                        )
    report(figures, servers, args)


def measure(
    wrk: str, endpoint: str, script: Path, base: str, args: argparse.Namespace, world: World, prefix: str
) -> WrkRun:
    wait_until_idle(world)
    empty_tables()
    if endpoint in PRODUCER_ENDPOINTS:
        start_runs(world, [f"w{prefix}", prefix], args.threads)
    # A short warm-up first: connections opened, code paths loaded, and the tables' statistics taken
    # with rows in them, as a running service has them (emptied tables would mislead the planner).
    run_wrk(wrk, script, base, args, seconds=2, prefix=f"w{prefix}")
    analyze_tables()
    return run_wrk(wrk, script, base, args, seconds=args.duration, prefix=prefix)


# ---------------------------------------------------------------- the database and the servers


@dataclass(frozen=True)
class World:
    service_role: str
    key: str
    tenant_id: int


def check_redis(redis_url: str) -> None:
    import redis

    try:
        redis.Redis.from_url(redis_url, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        sys.exit(f"bench_ingest_http: Redis at {redis_url} does not answer ({exc})")


def prepare_database(url: str) -> World:
    from django.core.management import call_command
    from django.db import connection

    from billing.models import Plan
    from tenants.database_roles import database_grant_service_role
    from tenants.services import api_key_create, tenant_create
    from tests.bench.floor_urls import FLOOR_SEQUENCE, FLOOR_TABLE

    call_command("migrate", verbosity=0)
    name = urlsplit(url).path.lstrip("/")
    service_role = f"{name}_service"
    quoted = connection.ops.quote_name(service_role)
    with connection.cursor() as cursor:
        cursor.execute(
            "DO $$ BEGIN"
            f" CREATE ROLE {quoted} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT;"
            " EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
        cursor.execute(f"CREATE TABLE {FLOOR_TABLE} (LIKE runs_event INCLUDING ALL)")
        cursor.execute(f"CREATE SEQUENCE {FLOOR_SEQUENCE}")
    database_grant_service_role(connection, service_role)
    # Counted on every request, refusing none: the limiter's cost is part of what is measured.
    Plan.objects.create(slug="bench", name="Bench", ingest_requests_per_minute=1_000_000_000)
    tenant = tenant_create(slug="bench", name="Bench", plan_slug="bench")
    _, key = api_key_create(tenant=tenant, name="bench producer")
    return World(service_role=service_role, key=key, tenant_id=tenant.pk)


def server_env(url: str, world: World, redis_url: str) -> dict[str, str]:
    from django.conf import settings

    parts = urlsplit(url)
    service_url = f"postgres://{world.service_role}@{parts.hostname}:{parts.port or 5432}{parts.path}"
    kept = {
        k: v for k, v in os.environ.items() if not k.startswith(("KAHN_", "DJANGO_", "DATABASE_", "OIDC_"))
    }
    return {
        **kept,
        "KAHN_MODE": "cloud",
        "DJANGO_SETTINGS_MODULE": "tests.bench.floor_settings",
        "DATABASE_URL": service_url,
        "DJANGO_SECRET_KEY": settings.SECRET_KEY,
        "KAHN_API_KEY_PEPPER": settings.KAHN_API_KEY_PEPPER,
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
        "REDIS_URL": redis_url,
        "KAHN_CACHE_KEY_PREFIX": f"kahn-bench-{uuid.uuid4().hex}",
        "KAHN_LOG_LEVEL": "ERROR",
        "OIDC_RP_CLIENT_ID": "bench",
        "OIDC_RP_CLIENT_SECRET": "bench",
        "OIDC_OP_AUTHORIZATION_ENDPOINT": "http://127.0.0.1:9/authorize",
        "OIDC_OP_TOKEN_ENDPOINT": "http://127.0.0.1:9/token",
        "OIDC_OP_USER_ENDPOINT": "http://127.0.0.1:9/userinfo",
        "OIDC_OP_JWKS_ENDPOINT": "http://127.0.0.1:9/jwks",
        "PYTHONPATH": str(PROJECT),
    }


@contextmanager
def serving(name: str, env: dict[str, str]) -> Iterator[str]:
    """`manage.py serve` in cloud mode, started as `name` says; its log is shown if a measurement fails."""
    from tests.servers import ServerDidNotStart, free_port, served

    args = ["--host", "127.0.0.1", *SERVERS[name]]
    if "--http-workers" in SERVERS[name]:
        args += ["--ws-port", str(free_port())]  # not the default --port + 1, which may be taken
    try:
        with served(env, *args, ready_path="/signed-out/") as server:
            try:
                yield server.url
            except MeasurementFailed as failure:
                log = server.output()[-6000:]
                sys.exit(f"bench_ingest_http: {failure}\n--- the server's log ({name}) ---\n{log}")
    except ServerDidNotStart as failure:
        sys.exit(f"bench_ingest_http: {name}: {failure}")


class MeasurementFailed(Exception):
    pass


# Runs each wrk thread writes; far more than its connections (see LUA).
RUNS_PER_THREAD = 128


def run_ids(prefix: str, threads: int) -> list[str]:
    return [f"{prefix}_t{tid}_r{r}" for tid in range(threads) for r in range(RUNS_PER_THREAD)]


def start_runs(world: World, prefixes: list[str], threads: int) -> None:
    """Each run's run_start, written ahead through the write path itself: a run's first request must
    be answered before its second is sent, which wrk cannot promise while runs are being created."""
    import orjson

    from runs.services import RunBatch
    from tenants.context import tenant_atomic
    from tenants.models import Tenant

    tenant = Tenant.objects.get(pk=world.tenant_id)
    with tenant_atomic(tenant):
        batch = RunBatch(tenant=tenant)
        names = [run_id for prefix in prefixes for run_id in run_ids(prefix, threads)]
        for run_id, change in batch.open(names).items():
            event = orjson.loads(run_start_line(run_id))
            change.append(event, orjson.dumps(event).decode())
        batch.flush()


def wait_until_idle(world: World) -> None:
    """Until the server has answered what it still held when wrk stopped: emptying tables under its
    writes would deadlock with them."""
    from django.db import connection

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND state <> 'idle'",
                [world.service_role],
            )
            if cursor.fetchone()[0] == 0:
                return
        time.sleep(0.2)
    raise MeasurementFailed("the server was still writing 30 s after wrk stopped")


def empty_tables() -> None:
    """Every measurement starts from empty tables, as the first one of the round does."""
    from django.db import connection

    from tests.bench.floor_urls import FLOOR_TABLE

    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE runs_event, runs_runnode, runs_diagnostic, runs_run, {FLOOR_TABLE}")


def analyze_tables() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


# ---------------------------------------------------------------- the producers' events


def event_lines(count: int) -> list[str]:
    """The first `count` events of a run, after its run_start: every node's attempts, round by round."""
    lines = []
    for n in range(count):
        attempt, node, phase = n // (3 * NODES) + 1, f"n{(n // 3) % NODES}", n % 3
        if phase == 0:
            before = "pending" if attempt == 1 else "failed"
            event = {"from": before, "to": "running", "event": "transition"}
        elif phase == 1:
            event = {
                "event": "node_attempt",
                "ok": False,
                "duration_s": 1.25,
                "exit_code": 1,
                "error": "flaky",
            }
        else:
            event = {"from": "running", "to": "failed", "event": "transition"}
        event = {"ts": TS, **event, "node": node, "attempt": attempt}
        lines.append(json.dumps(event, separators=(",", ":")))
    return lines


def run_start_line(run_id: str) -> str:
    graph = {
        "version": 1,
        "nodes": [{"id": f"n{i}", "deps": [f"n{i - 1}"] if i else []} for i in range(NODES)],
    }
    return json.dumps(
        {"ts": TS, "event": "run_start", "run_id": run_id, "graph": graph}, separators=(",", ":")
    )


def batch_rows(*, runs: int, batches: int) -> list[tuple]:
    """The rows runs_event gets from `batches` batches of each of `runs` runs: the raw COPY's input."""
    lines = event_lines(batches * BATCH_EVENTS)
    columns = [
        (event["ts"], event["event"], event.get("node"), line)
        for line in lines
        for event in [json.loads(line)]
    ]
    return [
        (run, seq, 1, *values) for run in range(1, runs + 1) for seq, values in enumerate(columns, start=1)
    ]


# Each wrk thread writes its own runs, one request per run in turn: a thread's runs are far more than
# its connections, so a run's last request has long been answered when its next one is sent, and each
# run's events arrive in order, as from a producer.
LUA = r"""
local mode, runs, batch_size = "%(mode)s", %(runs)d, %(batch)d
local key = "%(key)s"
local lines = {}
local counter, threads = 0, 0
all_threads = {}

function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
  all_threads[threads] = thread
end

function init(args)
  prefix = args[1]
  local f = io.open("%(lines)s", "r")
  for line in f:lines() do lines[#lines + 1] = line end
  f:close()
  if mode == "batch" then
    local batches = {}
    for b = 0, math.floor(#lines / batch_size) - 1 do
      local chunk = {}
      for i = b * batch_size + 1, (b + 1) * batch_size do chunk[#chunk + 1] = lines[i] end
      batches[b + 1] = table.concat(chunk, "\n") .. "\n"
    end
    lines = batches
  else
    for i = 1, #lines do lines[i] = lines[i] .. "\n" end
  end
  wrk.headers["Authorization"] = "Bearer " .. key
  wrk.headers["Content-Type"] = "application/x-ndjson"
end

request = function()
  local k = counter
  counter = counter + 1
  local r, n = k %% runs, math.floor(k / runs) + 1
  if n > #lines then
    -- Past the events written out for each run: a 404 the report shows, never a repeated event.
    return wrk.format("POST", "/bench/out-of-events-for-" .. mode)
  end
  local run = prefix .. "_t" .. tid .. "_r" .. r
  return wrk.format("POST", "/api/v1/runs/" .. run .. "/events", nil, lines[n])
end
"""

FLOOR_LUA = r"""
all_threads = {}
function setup(thread) all_threads[#all_threads + 1] = thread end
wrk.method = "POST"
wrk.path = "%(path)s"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '%(line)s'
"""

# Both scripts end the same way: the first refusal of each thread kept for the report, and the
# figures printed as one JSON line.
LUA_REPORT = r"""
response = function(status, headers, body)
  if status >= 300 and first_refusal == nil then
    first_refusal = status .. " " .. string.sub(body, 1, 300)
  end
end

done = function(summary, latency, requests)
  for _, thread in ipairs(all_threads) do
    local refusal = thread:get("first_refusal")
    if refusal then io.write("REFUSED " .. refusal .. "\n") end
  end
  io.write(string.format('WRK {"requests": %d, "duration_us": %d, "non2xx": %d, "errors": %d, ' ..
    '"p50_us": %d, "p99_us": %d}\n', summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def write_scripts(folder: Path, key: str) -> dict[str, Path]:
    # Enough for any run this benchmark makes: 64 batches, 32,000 single events, per run.
    lines = folder / "events.ndjson"
    lines.write_text("\n".join(event_lines(64 * BATCH_EVENTS)) + "\n")
    scripts = {}
    for mode in ("single", "batch"):
        script = folder / f"{mode}.lua"
        params = {"mode": mode, "runs": RUNS_PER_THREAD, "key": key, "lines": lines, "batch": BATCH_EVENTS}
        script.write_text(LUA % params + LUA_REPORT)
        scripts[mode] = script
    for name, path in (("floor", "/bench/floor"), ("trips", "/bench/round-trips")):
        scripts[name] = folder / f"{name}.lua"
        scripts[name].write_text(FLOOR_LUA % {"line": event_lines(2)[1], "path": path} + LUA_REPORT)
    return scripts


@dataclass(frozen=True)
class WrkRun:
    rate: float
    p50_ms: float
    p99_ms: float


def run_wrk(
    wrk: str, script: Path, base: str, args: argparse.Namespace, *, seconds: int, prefix: str
) -> WrkRun:
    load = ["-t", str(args.threads), "-c", str(args.connections), "-d", f"{seconds}s", "--timeout", "10s"]
    command = [wrk, *load, "-s", str(script), base, "--", prefix]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next((line for line in output.splitlines() if line.startswith("WRK ")), None)
    if line is None:
        raise MeasurementFailed(f"wrk said nothing usable:\n{output}")
    figures = json.loads(line[4:])
    if figures["non2xx"] or figures["errors"]:
        refused, failed = figures["non2xx"], figures["errors"]
        raise MeasurementFailed(f"{refused} answers were not 2xx, {failed} requests failed:\n{output}")
    return WrkRun(
        rate=figures["requests"] / (figures["duration_us"] / 1e6),
        p50_ms=figures["p50_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
    )


# ---------------------------------------------------------------- the report


class Figures:
    """Each figure of each round. A share is a measurement over its floor of the same round, and its
    median is taken over rounds: medians of the two taken apart would pair a fast round's floor with
    a slow round's measurement."""

    def __init__(self) -> None:
        self.rates: dict[str, list[float]] = {}
        self.p99s: dict[str, list[float]] = {}

    def add(self, name: str, rate: float, p99_ms: float) -> None:
        self.rates.setdefault(name, []).append(rate)
        self.p99s.setdefault(name, []).append(p99_ms)

    def rate(self, name: str) -> float:
        return statistics.median(self.rates[name])

    def p99(self, name: str) -> float:
        return statistics.median(self.p99s[name])

    def share(self, name: str, floor: str) -> float:
        return statistics.median(r / f for r, f in zip(self.rates[name], self.rates[floor], strict=True))


def report(figures: Figures, servers: list[str], args: argparse.Namespace) -> None:
    from tests.bench.floor_urls import CACHE_ROUND_TRIPS, EXTRA_DATABASE_ROUND_TRIPS

    trips = f"+{EXTRA_DATABASE_ROUND_TRIPS} PostgreSQL, +{CACHE_ROUND_TRIPS} cache"
    print()
    print(f"medians of {args.repeat} rounds of {args.duration} s, wrk -t{args.threads} -c{args.connections}")
    print(f"{'':<36}{'events/s':>10}{'p99 ms':>9}   share of its floor (median of the rounds' shares)")
    for name in servers:
        alone, single = (figures.share(f"{name}/{e}", f"{name}/floor") for e in ("trips", "single"))
        rows = (
            ("floor view (1 INSERT)", "floor", ""),
            ("round trips alone", "trips", f"{alone:6.1%} of its floor view ({trips})"),
            ("single events", "single", f"{single:6.1%} of its floor view"),
            ("raw COPY of the batches' rows", "copy", ""),
            ("batches of 500", "batch", f"{figures.share(f'{name}/batch', f'{name}/copy'):6.1%} of raw COPY"),
        )
        for label, endpoint, share in rows:
            figure = f"{name}/{endpoint}"
            p99 = f"{figures.p99(figure):>9.1f}" if endpoint != "copy" else " " * 9
            print(f"{name + ' ' + label:<36}{figures.rate(figure):>10,.0f}{p99}   {share}")
    print()
    for name in servers:
        alone, single = (figures.share(f"{name}/{e}", f"{name}/floor") for e in ("trips", "single"))
        batch = figures.share(f"{name}/batch", f"{name}/copy")
        p99 = figures.p99(f"{name}/single")
        verdict(
            f"{name}: batches ≥ {TARGET_BATCH_SHARE:.0%} of raw COPY: {batch:.1%}",
            batch >= TARGET_BATCH_SHARE,
        )
        verdict(
            f"{name}: single events ≥ {TARGET_SINGLE_SHARE:.0%} of the floor view: {single:.1%}",
            single >= TARGET_SINGLE_SHARE,
        )
        verdict(
            f"{name}: single events p99 ≤ {TARGET_SINGLE_P99_MS:.0f} ms: {p99:.1f} ms",
            p99 <= TARGET_SINGLE_P99_MS,
        )
        print(
            f"        {name}: a single event's round trips alone reach {alone:.1%} of the floor view; "
            f"with its work, {single:.1%}"
        )


def verdict(text: str, ok: bool) -> None:
    print(f"{'MET   ' if ok else 'MISSED'}  {text}")


if __name__ == "__main__":
    main()
