"""Metrics for Prometheus (issue 19), read with prometheus-client's own text parser: a tenant's
figures at /api/v1/metrics equal what the run list shows; the operator's at /metrics count what the
processes did, across gunicorn's workers too."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
import requests
from django.test import override_settings
from prometheus_client import REGISTRY
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from ingest.simulator import archive_synthesize
from runs import metrics
from runs.alerts.delivery import notifications_deliver_due
from runs.alerts.services import RuleSpec, rule_create
from runs.models import Diagnostic, Event
from tenants.services import api_key_create
from tests.alerts.receiver import webhook_receiver
from tests.conftest import SAMPLE_ARCHIVE, ingest_quietly, run_record, scope_server, world_build
from tests.ingest.test_rate_limits import plan_of_three, redis_cache
from tests.servers import free_port
from tests.tenants.conftest import POSTGRES_ONLY, cloud, cloud_server_env

__all__ = ["cloud", "plan_of_three"]

pytestmark = pytest.mark.django_db

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
OPERATOR_TOKEN = "operator-token-for-tests"


def parsed(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scraped(response) -> Samples:
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    return parsed(response.content.decode())


def series(samples: Samples, name: str, label: str) -> dict[str, float]:
    """`name`'s samples by the value of their one label."""
    return {dict(labels)[label]: value for (n, labels), value in samples.items() if n == name}


@pytest.fixture
def recent_sample(local_tenant, tmp_path: Path) -> Path:
    """The sample archive moved to yesterday (node figures cover the last 7 days), beside 3
    synthetic runs of long ago: the run list's counts take in both, the node figures only the first."""
    root = tmp_path / "archive"
    shift = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1) - datetime(2026, 11, 20, tzinfo=UTC)
    for log in SAMPLE_ARCHIVE.glob("runs/*/transitions.jsonl"):
        folder = root / "runs" / log.parent.name
        folder.mkdir(parents=True)
        for other in log.parent.iterdir():
            if other.name != log.name:
                (folder / other.name).write_bytes(other.read_bytes())
        lines = []
        for line in log.read_text().splitlines():
            try:
                event = json.loads(line)
                when = datetime.fromisoformat(event["ts"].replace("Z", "+00:00")) + shift
                event["ts"] = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
                line = json.dumps(event)
            except (ValueError, KeyError, TypeError, AttributeError):
                pass  # the sample's malformed lines stay as they are
            lines.append(line)
        (folder / log.name).write_text("\n".join(lines) + "\n")
    archive_synthesize(root, runs=3, nodes=4, seed=7)
    ingest_quietly(root)
    return root


def test_a_tenants_metrics_are_the_run_lists_counts(client, recent_sample, local_tenant):
    samples = scraped(client.get("/api/v1/metrics"))
    rows = client.get("/api/v1/runs/?page_size=100").json()["results"]
    assert len(rows) == 6 + 3

    runs = {
        (dict(labels)["status"], dict(labels)["outcome"]): value
        for (name, labels), value in samples.items()
        if name == "kahn_runs"
    }
    assert {k: v for k, v in runs.items() if v} == Counter(
        (r["status"], r["outcome"] or "none") for r in rows
    )
    assert len(runs) == 3 * 4  # every status and outcome, zeros too: a series does not vanish

    durations = [r["duration_s"] for r in rows if r["duration_s"] is not None]
    assert samples["kahn_run_duration_seconds_count", ()] == len(durations)
    assert samples["kahn_run_duration_seconds_sum", ()] == pytest.approx(sum(durations))
    for le, count in series(samples, "kahn_run_duration_seconds_bucket", "le").items():
        assert count == sum(d <= float(le) for d in durations), le

    assert samples["kahn_events_stored", ()] == Event.objects.filter(tenant=local_tenant).count()
    stored = Counter(Diagnostic.objects.filter(tenant=local_tenant).values_list("severity", flat=True))
    assert series(samples, "kahn_diagnostics", "severity") == {
        s: stored[s] for s in ("error", "warning", "info")
    }

    # Node figures: the runs of the last 7 days, that is the sample's, not the synthetic ones.
    recent = [r for r in rows if not r["run_id"].startswith("run_7_")]
    attempts, flakes = Counter(), Counter()
    for row in recent:
        detail = client.get(f"/api/v1/runs/{row['run_id']}/").json()
        for node in detail["nodes"]:
            attempts[node["id"]] += row["node_attempts"].get(node["id"], 0)
            if node["state"] == "done":
                flakes[node["id"]] += row["node_attempts"].get(node["id"], 1) - 1
    assert series(samples, "kahn_node_attempts", "node") == {n: a for n, a in attempts.items() if a}
    assert series(samples, "kahn_node_flake_retries", "node") == {
        n: flakes[n] for n in attempts if attempts[n]
    }
    assert sum(flakes.values()) > 0  # the sample's flaky run is among them


def test_past_the_nodes_shown_the_rest_are_summed_as_other(client, recent_sample, monkeypatch):
    everything = series(scraped(client.get("/api/v1/metrics")), "kahn_node_attempts", "node")
    monkeypatch.setattr(metrics, "NODES_SHOWN", 2)
    shown = series(scraped(client.get("/api/v1/metrics")), "kahn_node_attempts", "node")
    top = sorted(everything.items(), key=lambda item: (-item[1], item[0]))[:2]
    assert shown == {**dict(top), "_other": sum(everything.values()) - sum(a for _, a in top)}


def test_alert_deliveries_count_by_channel_and_result(
    client, local_tenant, django_capture_on_commit_callbacks
):
    def delivered(result: str) -> float:
        labels = {"channel": "webhook", "result": result}
        return REGISTRY.get_sample_value("kahn_alert_deliveries_total", labels) or 0

    before = delivered("failed"), delivered("delivered")
    with webhook_receiver(503, 200) as receiver:
        spec = RuleSpec(name="failures", condition="run_failed", channel_kind="webhook", url=receiver.url)
        rule_create(tenant=local_tenant, spec=spec)
        run_record(local_tenant, "nightly", ok=False)
        with django_capture_on_commit_callbacks(execute=True):
            notifications_deliver_due(tenant=local_tenant)
            notifications_deliver_due(tenant=local_tenant, now=datetime.now(UTC) + timedelta(minutes=1))
    assert (delivered("failed"), delivered("delivered")) == (before[0] + 1, before[1] + 1)
    tenant_series = scraped(client.get("/api/v1/metrics"))
    assert tenant_series["kahn_alert_deliveries", (("channel", "webhook"), ("result", "failed"))] == 1
    assert tenant_series["kahn_alert_deliveries", (("channel", "webhook"), ("result", "delivered"))] == 1


def test_an_import_counts_its_events_and_runs(local_tenant, sample_archive):
    before = {
        name: REGISTRY.get_sample_value(name)
        for name in ("kahn_import_events_total", "kahn_import_runs_total")
    }
    ingest_quietly(sample_archive)
    stored = Event.objects.filter(tenant=local_tenant).count()
    assert (
        REGISTRY.get_sample_value("kahn_import_events_total") == before["kahn_import_events_total"] + stored
    )
    assert REGISTRY.get_sample_value("kahn_import_runs_total") == before["kahn_import_runs_total"] + 6
    assert REGISTRY.get_sample_value("kahn_import_seconds_total") > 0


# ---------------------------------------------------------------- the operator's /metrics


def test_without_a_token_the_operators_metrics_are_not_served(client, local_tenant):
    response = client.get("/metrics")
    assert response.status_code == 404


@override_settings(KAHN_METRICS_TOKEN=OPERATOR_TOKEN)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {OPERATOR_TOKEN}", OPERATOR_TOKEN])
def test_the_operators_metrics_need_the_token(client, local_tenant, authorization):
    headers = {} if authorization is None else {"HTTP_AUTHORIZATION": authorization}
    response = client.get("/metrics", **headers)
    assert response.status_code == 401
    assert "KAHN_METRICS_TOKEN" in response.content.decode()
    assert b"kahn_" not in response.content


def operator_scrape(client) -> Samples:
    return scraped(client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {OPERATOR_TOKEN}"))


def post_events(client, run_id: str, events: list[dict], **headers):
    body = b"".join(orjson.dumps(e) + b"\n" for e in events)
    return client.post(f"/api/v1/runs/{run_id}/events", body, content_type="application/x-ndjson", **headers)


@override_settings(KAHN_METRICS_TOKEN=OPERATOR_TOKEN)
def test_the_operators_metrics_count_ingest_requests_and_events_by_result(client, plan_of_three):
    before = operator_scrape(client)
    events = [{"seq": s, "ts": "2026-11-20T10:00:00.000Z", "event": "run_start", "run_id": "r"} for s in (0,)]
    events.append({"seq": 1, "ts": "2026-11-20T10:00:01.000Z", "event": "run_end", "exit_code": 0})
    with override_settings(KAHN_RATE_LIMITS=True, CACHES=redis_cache()):
        assert post_events(client, "r", events).status_code == 200
        assert post_events(client, "r", events).status_code == 200  # a retry: duplicates
        refused = post_events(client, "r", [{"seq": 2}])  # no ts, no event
        assert refused.status_code == 400
        assert post_events(client, "r", events).status_code == 429  # the plan's fourth
    after = operator_scrape(client)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert grew("kahn_ingest_requests_total", result="ok") == 2
    assert grew("kahn_ingest_requests_total", result=refused.json()["error"]["code"]) == 1
    assert grew("kahn_ingest_requests_total", result="rate_limited") == 1
    assert grew("kahn_rate_limited_requests_total") == 1
    assert grew("kahn_ingest_request_duration_seconds_count", result="ok") == 2
    assert grew("kahn_ingest_events_total", result="accepted") == 2
    assert grew("kahn_ingest_events_total", result="duplicate") == 2
    # A read on the same path is no ingest request.
    client.get("/api/v1/runs/r/events")
    assert (
        operator_scrape(client).get(("kahn_ingest_requests_total", (("result", "ok"),)))
        == after["kahn_ingest_requests_total", (("result", "ok"),)]
    )
    assert ("process_resident_memory_bytes", ()) in after  # the process's own, beside


# ---------------------------------------------------------------- cloud mode


def test_in_cloud_a_key_reads_its_own_tenants_metrics_only(cloud, world_runs):
    _, acme_key = api_key_create(tenant=world_runs.acme, name="reader", scopes=["read"])
    _, globex_key = api_key_create(tenant=world_runs.globex, name="reader", scopes=["read"])
    _, ingest_key = api_key_create(tenant=world_runs.acme, name="producer", scopes=["ingest"])
    run_record(world_runs.globex, "globex_again", ok=False)

    def runs(key: str) -> dict[str, float]:
        samples = scraped(cloud.get("/api/v1/metrics", HTTP_AUTHORIZATION=f"Bearer {key}"))
        return {
            dict(labels)["outcome"]: value
            for (name, labels), value in samples.items()
            if name == "kahn_runs" and dict(labels)["status"] == "complete" and value
        }

    assert runs(acme_key) == {"clean": 1}
    assert runs(globex_key) == {"failed": 2}
    # No credential, or a key that only sends runs: refused, in the error shape.
    assert cloud.get("/api/v1/metrics").status_code in (401, 403)
    response = cloud.get("/api/v1/metrics", HTTP_AUTHORIZATION=f"Bearer {ingest_key}")
    assert (response.status_code, response.json()["error"]["code"]) == (403, "insufficient_scope")


@POSTGRES_ONLY[0]
@POSTGRES_ONLY[1]
@pytest.mark.django_db(transaction=True)
def test_two_gunicorn_workers_count_a_thousand_ingest_requests_as_one(service_role, tmp_path):
    world = world_build()
    _, key = api_key_create(tenant=world.acme, name="producer")
    env = cloud_server_env(
        service_role,
        KAHN_METRICS_TOKEN=OPERATOR_TOKEN,
        KAHN_RATE_LIMITS="0",
        KAHN_LIVE_REDIS_PREFIX=f"kahn-test-{uuid.uuid4().hex[:12]}",
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path),
    )
    args = ("--host", "127.0.0.1", "--http-workers", "2", "--ws-port", str(free_port()))
    with scope_server(env, *args) as url, requests.Session() as session:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/x-ndjson"}

        def post(n: int) -> tuple[int, str]:
            run_id, seq = f"many_{n % 10}", n // 10
            line = {"seq": seq, "ts": "2026-11-20T10:00:00.000Z", "event": "run_start", "run_id": run_id}
            if seq:
                line = {"seq": seq, "ts": "2026-11-20T10:00:00.000Z", "event": "heartbeat"}
            answer = requests.post(f"{url}/api/v1/runs/{run_id}/events", orjson.dumps(line), headers=headers)
            return answer.status_code, answer.headers.get("Server", "")

        # Each run's events in order, runs side by side: both workers answer.
        answers = []
        for wave in range(100):
            with ThreadPoolExecutor(4) as pool:
                answers += pool.map(post, range(wave * 10, wave * 10 + 10))
        assert Counter(status for status, _ in answers) == {200: 1000}
        scrape = session.get(
            f"{url}/metrics", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}, timeout=10
        )
        samples = parsed(scrape.text)
        assert samples["kahn_ingest_requests_total", (("result", "ok"),)] == 1000
        assert samples["kahn_ingest_events_total", (("result", "accepted"),)] == 1000
        assert samples["kahn_ingest_request_duration_seconds_count", (("result", "ok"),)] == 1000
    # Both workers answered some: each process keeps its own file, which the scrape added up.
    per_process = [
        sum(
            sample.value
            for family in MultiProcessCollector.merge([str(path)])
            for sample in family.samples
            if sample.name == "kahn_ingest_requests_total"
        )
        for path in tmp_path.glob("counter_*.db")
    ]
    assert sum(per_process) == 1000
    assert len([n for n in per_process if n]) == 2
