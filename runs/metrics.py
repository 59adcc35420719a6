"""A tenant's figures in Prometheus' text format (`GET /api/v1/metrics`), computed from its stored rows.

Five queries, each an aggregate over run, node or delivery rows, none over events: the counts a
run row already keeps (events stored, diagnostics by severity) are summed, not recounted. They are
what is stored now, so they go down when retention removes runs: gauges, and a histogram of the
durations of the runs kept. The operator's own metrics, counted by the processes, are
`kahn_site.metrics`.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

from django.db.models import Count, F, Q, Sum
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

from runs.alerts.models import DeliveryAttempt
from runs.models import Run, RunNode
from runs.selectors import OUTCOMES, STATUSES, status_is
from tenants.models import Tenant

# Run durations, seconds: from a minute's job to a day's.
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
# Node series: the nodes with most attempts over this window, the rest summed as `_other`.
NODES_SHOWN = 200
NODE_WINDOW = timedelta(days=7)
OTHER_NODES = "_other"


def tenant_metric_families(*, tenant: Tenant, now: datetime) -> Iterator[Metric]:
    runs = Run.objects.filter(tenant=tenant)

    by_status = GaugeMetricFamily(
        "kahn_runs",
        "Runs stored, by status (at this moment) and outcome (none while a run has no run_end).",
        labels=["status", "outcome"],
    )
    counts = runs.values_list("outcome").annotate(
        **{f"{status}_runs": Count("pk", filter=status_is(status, now)) for status in STATUSES}
    )
    found = {
        (status, outcome or "none"): n
        for outcome, *per_status in counts
        for status, n in zip(STATUSES, per_status, strict=True)
    }
    for status in STATUSES:
        for outcome in (*OUTCOMES, "none"):
            by_status.add_metric([status, outcome], found.get((status, outcome), 0))
    yield by_status

    totals = runs.aggregate(
        events=Sum("next_seq", default=0),
        error=Sum("errors", default=0),
        warning=Sum("warnings", default=0),
        info=Sum("infos", default=0),
        timed=Count("duration_s"),
        seconds=Sum("duration_s", default=0.0),
        **{f"le_{i}": Count("pk", filter=Q(duration_s__lte=b)) for i, b in enumerate(DURATION_BUCKETS)},
    )
    durations = HistogramMetricFamily(
        "kahn_run_duration_seconds", "Durations of the stored runs that have one (complete runs)."
    )
    buckets = [(str(float(b)), totals[f"le_{i}"]) for i, b in enumerate(DURATION_BUCKETS)]
    durations.add_metric([], [*buckets, ("+Inf", totals["timed"])], sum_value=totals["seconds"])
    yield durations
    yield GaugeMetricFamily("kahn_events_stored", "Events stored, in every run kept.", value=totals["events"])
    diagnostics = GaugeMetricFamily(
        "kahn_diagnostics",
        "Diagnostics stored, by severity (an interrupted run's open attempts are not stored: "
        'they count in kahn_runs{status="interrupted"}).',
        labels=["severity"],
    )
    for severity in ("error", "warning", "info"):
        diagnostics.add_metric([severity], totals[severity])
    yield diagnostics

    yield from _node_families(tenant, since=now - NODE_WINDOW)

    deliveries = GaugeMetricFamily(
        "kahn_alert_deliveries",
        "Alert delivery attempts recorded, by channel and result.",
        labels=["channel", "result"],
    )
    attempts = (
        DeliveryAttempt.objects.filter(tenant=tenant)
        .values("notification__rule__channel_kind", "delivered")
        .annotate(n=Count("pk"))
        .order_by()
    )
    for row in attempts:
        result = "delivered" if row["delivered"] else "failed"
        deliveries.add_metric([row["notification__rule__channel_kind"], result], row["n"])
    yield deliveries


def _node_families(tenant: Tenant, *, since: datetime) -> Iterator[Metric]:
    """Attempts and flake retries (SPEC section 4: a node that ended done, its attempts less one)
    of the runs started since `since`, for the NODES_SHOWN nodes with most attempts, the rest summed."""
    nodes = RunNode.objects.filter(tenant=tenant, run__started__gte=since)
    attempts_sum = Sum("attempts", default=0)
    flakes_sum = Sum(F("attempts") - 1, filter=Q(state="done", attempts__gt=1), default=0)
    top = list(
        nodes.values_list("node_id")
        .annotate(attempts_sum=attempts_sum, flakes_sum=flakes_sum)
        .order_by("-attempts_sum", "node_id")[:NODES_SHOWN]
    )
    attempts = GaugeMetricFamily(
        "kahn_node_attempts",
        f"Attempts of each node in the runs started in the last {NODE_WINDOW.days} days; the nodes "
        f'past the {NODES_SHOWN} with most are summed as node="{OTHER_NODES}".',
        labels=["node"],
    )
    flakes = GaugeMetricFamily(
        "kahn_node_flake_retries",
        "Flake retries of each node (retries of a node that ended done) over the same runs and nodes.",
        labels=["node"],
    )
    for node_id, node_attempts, node_flakes in top:
        attempts.add_metric([node_id], node_attempts)
        flakes.add_metric([node_id], node_flakes)
    if len(top) == NODES_SHOWN:
        total = nodes.aggregate(attempts_sum=attempts_sum, flakes_sum=flakes_sum)
        attempts.add_metric([OTHER_NODES], total["attempts_sum"] - sum(row[1] for row in top))
        flakes.add_metric([OTHER_NODES], total["flakes_sum"] - sum(row[2] for row in top))
    yield attempts
    yield flakes


class _TenantCollector:
    def __init__(self, tenant: Tenant, now: datetime) -> None:
        self.tenant = tenant
        self.now = now

    def collect(self) -> Iterator[Metric]:
        return tenant_metric_families(tenant=self.tenant, now=self.now)


def tenant_metrics_text(*, tenant: Tenant, now: datetime) -> bytes:
    """The tenant's figures as Prometheus' text exposition format (version 0.0.4)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_TenantCollector(tenant, now))
    return generate_latest(registry)
