"""The pages: run history, one run's replay, and a node across runs.

Server-rendered and readable without JavaScript: every picture is SVG drawn here, and replay works
as a plain form (`?at=N`); `static/replay.js` only makes the scrubber move without a reload. Every
query goes through `runs.selectors` with the current tenant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.core.paginator import Paginator
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseRedirect,
    JsonResponse,
)
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from rest_framework.request import Request

from kahn_site.api_errors import InvalidQuery
from retention.selectors import run_deletion
from retention.views import run_deleted_page
from runs import badges, selectors
from runs.models import Run
from runs.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, RunCursorPagination
from runs.pictures import (
    FOCUS_GENERATIONS,
    dag_picture,
    focus_nodes,
    gantt_picture,
    history_chart,
)
from runs.read_model import RunDetail
from runs.reduction import run_id_valid
from runs.timeline import EventRow
from tenants.context import tenant_current
from tenants.models import Tenant
from tenants.page_guards import managers_only_in_cloud

EVENTS_PER_PAGE = 100
MAX_DRAWN_NODES = 300
# A bigger graph's full DAG is drawn when asked for (`?dag=full`, or a search): the page leads with
# the focused subgraph of what failed, and stays small and quick.
DAG_INLINE_NODES = 200
# A smaller graph is on one screen already: a focused subgraph would only draw most of it again.
FOCUS_FROM_NODES = 20
# The timeline draws this many nodes a page, failures first when it takes more than one page.
TIMELINE_PAGE = 50
# A node search is cut to the longest node id there can be (SPEC section 2).
MAX_FIND = 200
# Where the pages' live updates come from (kahn_site.asgi routes it; SPEC section 7).
LIVE_SOCKET_PATH = "/ws/live"
NODE_RUN_CHOICES = (20, 50, 100, 200)
# Rows of a comparison's node table a page: two 2,000-node runs side by side stay a page to read.
COMPARED_NODES_PER_PAGE = 200

VERDICT_FILTERS = {
    "failed": {"outcome": "failed"},
    "flaky": {"outcome": "clean_with_flake"},
    "clean": {"outcome": "clean"},
    "running": {"status": "running"},
    "interrupted": {"status": "interrupted"},
}


PAGE_SIZES = (25, 50, 100, MAX_PAGE_SIZE)


class HistoryFilterForm(forms.Form):
    status = forms.ChoiceField(
        required=False,
        choices=[("", "All runs"), *((key, key.capitalize()) for key in VERDICT_FILTERS)],
        label="Show",
    )
    q = forms.CharField(required=False, max_length=64, label="Run id contains")
    node = forms.CharField(required=False, max_length=200, label="Has node")
    failed_node = forms.CharField(required=False, max_length=200, widget=forms.HiddenInput)
    started_from = forms.DateField(
        required=False, label="Started from", widget=forms.DateInput({"type": "date"})
    )
    started_to = forms.DateField(required=False, label="to", widget=forms.DateInput({"type": "date"}))
    page_size = forms.TypedChoiceField(
        required=False,
        coerce=int,
        empty_value=DEFAULT_PAGE_SIZE,  # type: ignore[arg-type]  # any value, in Django; str in its stubs
        choices=[(n, n) for n in PAGE_SIZES],
        label="Per page",
        error_messages={
            "invalid_choice": "%(value)s is not a page size here: choose one of "
            + ", ".join(map(str, PAGE_SIZES))
            + "."
        },
    )

    def filters(self) -> selectors.RunFilters:
        data = self.cleaned_data
        start, end = data.get("started_from"), data.get("started_to")
        return selectors.RunFilters(
            **VERDICT_FILTERS.get(data.get("status") or "", {}),
            q=data.get("q") or None,
            node=data.get("node") or None,
            failed_node=data.get("failed_node") or None,
            started_after=datetime.combine(start, time.min, UTC) if start else None,
            # The "to" day is included: runs started before the next midnight. No time is stored
            # past the last day of 9999 (SPEC section 2), so that day bounds nothing.
            started_before=(
                datetime.combine(end + timedelta(days=1), time.min, UTC) if end and end < date.max else None
            ),
        )


def run_history(request: HttpRequest) -> HttpResponse:
    tenant = tenant_current()
    data = (
        request.GET if "page_size" in request.GET else {**request.GET.dict(), "page_size": DEFAULT_PAGE_SIZE}
    )
    form = HistoryFilterForm(data)
    runs: list[Run] = []
    paginator = RunCursorPagination()
    error = None
    now = timezone.now()  # one clock for the status filter and the statuses shown
    if form.is_valid():
        queryset = selectors.run_list(tenant=tenant, filters=form.filters(), now=now)
        try:
            runs = paginator.paginate_queryset(queryset, Request(request))
        except InvalidQuery:
            error = "That page link is out of date: showing the newest runs."
            runs = paginator.paginate_queryset(queryset, Request(_without_cursor(request)))
    rows = selectors.run_rows(runs, tenant=tenant, now=now)
    # The export takes the run list API's filters: the page's words (a verdict, days) in the API's.
    export_filters = form.filters() if form.is_valid() else None
    filtered = any(v for k, v in request.GET.items() if k not in ("cursor", "page_size"))
    context = {
        "nav": "runs",
        "form": form,
        "runs": rows,
        "error": error,
        "filtered": filtered,
        "next_url": paginator.get_next_link() if runs else None,
        "previous_url": paginator.get_previous_link() if runs else None,
        "chart": history_chart(rows),
        "verdict_links": [("", "All")] + [(key, key.capitalize()) for key in VERDICT_FILTERS],
        "current_status": form.cleaned_data.get("status", "") if form.is_valid() else "",
        "export_links": _export_links(export_filters) if export_filters is not None else [],
        # static/live.js: the rows of every run of the tenant, redrawn from the server as they change.
        "live": {"socket": LIVE_SOCKET_PATH, "runs": "*"},
    }
    return render(request, "runs/history.html", context)


def _export_links(filters: selectors.RunFilters) -> list[tuple[str, str]]:
    """(format, URL) of `GET /api/v1/runs/export` for the runs these filters list."""
    query = {
        name: value.isoformat() if isinstance(value, datetime) else value
        for name in selectors.RunFilters.__dataclass_fields__
        if (value := getattr(filters, name)) is not None
    }
    url = reverse("api-runs-export")
    return [(name, f"{url}?{urlencode({**query, 'format': name})}") for name in ("csv", "ndjson")]


def _without_cursor(request: HttpRequest) -> HttpRequest:
    copy = request.GET.copy()
    copy.pop("cursor", None)
    request.GET = copy  # type: ignore[assignment]  # the view's own copy; Django's is read-only
    return request


def run_page(request: HttpRequest, run_id: str) -> HttpResponse:
    tenant = tenant_current()
    try:
        run = selectors.run_detail(tenant=tenant, run_id=run_id)
    except Run.DoesNotExist:
        deletion = run_deletion(tenant=tenant, run_id=run_id) if run_id_valid(run_id) else None
        if deletion is not None:
            return run_deleted_page(request, deletion)
        raise Http404(f"There is no run named “{run_id}”.") from None
    events, timeline = run.events, run.timeline
    order = [node.id for node in run.nodes]

    # How the run stands now: what the focused subgraph and the timeline's order are chosen by,
    # whatever moment the replay draws.
    final_states = {node.id: node.state for node in run.nodes}
    final_attempts = {node.id: node.attempt_count for node in run.nodes}
    at = _replay_position(request, timeline.last_seq)
    if at is None:
        states, attempts = final_states, final_attempts
    else:
        states = {node_id: timeline.nodes[node_id].state_at(at) for node_id in order}
        attempts = {node_id: timeline.nodes[node_id].attempts_at(at) for node_id in order}

    log = event_log_page(request, tenant=tenant, run=run)
    if log.jump is not None:
        return HttpResponseRedirect(log.jump)

    focus = focus_nodes(timeline, order, final_states) if len(order) > FOCUS_FROM_NODES else None
    find = request.GET.get("find", "").strip()[:MAX_FIND]
    found = [node_id for node_id in order if find.casefold() in node_id.casefold()] if find else []
    dag = focus_dag = None
    if len(order) <= DAG_INLINE_NODES or request.GET.get("dag") == "full" or find:
        first = [*found, *(focus.nodes if focus else [])]
        dag = dag_picture(timeline, drawn_nodes(order, timeline, first=first), states, attempts)
    if focus is not None:
        focus_dag = dag_picture(timeline, focus.nodes, states, attempts, layers=focus.layers)
    rows = timeline_rows(order, final_states, final_attempts)
    rows_from = _int_param(request, "nodes_from", default=0, low=0, high=max(0, len(rows) - 1))
    rows_from -= rows_from % TIMELINE_PAGE
    gantt = gantt_picture(timeline, rows[rows_from : rows_from + TIMELINE_PAGE], states, at)
    context = {
        "nav": "runs",
        "run": run,
        "at": at,
        "last_seq": timeline.last_seq,
        "at_label": _event_label(events, at if at is not None else timeline.last_seq),
        "dag": dag,
        "focus": focus,
        "focus_dag": focus_dag,
        "focus_generations": FOCUS_GENERATIONS,
        "max_drawn": MAX_DRAWN_NODES,
        "find": find,
        "found": set(found),
        "node_count": len(order),
        "undrawn": len(order) - len(dag.nodes) if dag else 0,
        "timeline_paged": len(rows) > TIMELINE_PAGE,
        "nodes_from": rows_from,
        "nodes_to": min(len(rows), rows_from + TIMELINE_PAGE),
        "nodes_previous": rows_from - TIMELINE_PAGE if rows_from else None,
        "nodes_next": rows_from + TIMELINE_PAGE if rows_from + TIMELINE_PAGE < len(rows) else None,
        "gantt": gantt,
        "replay": {
            "lastSeq": timeline.last_seq,
            "eventX": gantt.event_x,
            "labels": [_short_event(seq, kind, node, facts) for seq, _ts, kind, node, facts in events],
        },
        "diagnostics": run.diagnostics,
        "mismatch": run.summary_mismatch,
        "log": log,
        "log_from": log.start,
        "producer": next((f.get("producer") for _s, _t, kind, _n, f in events if kind == "run_start"), None),
        "previous_run": selectors.run_previous_of_graph(tenant=tenant, run=run),
        # static/live.js: events after the last one drawn, and the page's parts redrawn as they come.
        "live": {
            "socket": LIVE_SOCKET_PATH,
            "runId": run.run_id,
            "afterSeq": timeline.last_seq,
            "complete": run.complete,
        },
    }
    return render(request, "runs/run.html", context)


class EventLogFilterForm(forms.Form):
    """The run page's event log: the events naming a node, of a kind, or from a seq (`?seq=N`
    jumps to event N). Each value is checked against the run, and a bad one is named."""

    node = forms.CharField(required=False, max_length=200)
    kind = forms.CharField(required=False, max_length=64)
    seq = forms.CharField(required=False, max_length=40, label="Event")

    def __init__(self, data: Any, *, tenant: Tenant, run: RunDetail, kinds: list[str]) -> None:
        super().__init__(data)
        self.tenant, self.run, self.kinds = tenant, run, kinds

    def clean_node(self) -> str | None:
        node = self.cleaned_data["node"] or None
        if node is None or any(n.id == node for n in self.run.nodes):
            return node
        # An event of a kind the reduction does not know may name a node the run lacks.
        if selectors.run_event_names_node(tenant=self.tenant, run=self.run.id, node=node):
            return node
        raise forms.ValidationError(f"“{node}” is not a node of this run.")

    def clean_kind(self) -> str | None:
        kind = self.cleaned_data["kind"] or None
        if kind is not None and kind not in self.kinds:
            kinds = ", ".join(self.kinds) or "none"
            raise forms.ValidationError(
                f"“{kind}” is not a kind of event in this run's log, which has {kinds}."
            )
        return kind

    def clean_seq(self) -> int | None:
        text = self.cleaned_data["seq"].strip()
        if not text:
            return None
        last_seq = self.run.next_seq - 1
        try:
            seq = int(text)
        except ValueError:
            seq = -1
        if not 0 <= seq <= last_seq:
            span = f"its events are 0 to {last_seq}" if last_seq >= 0 else "it has no events yet"
            raise forms.ValidationError(f"“{text}” is not an event of this run: {span}.")
        return seq


@dataclass(frozen=True, slots=True)
class EventLogPage:
    """One page of a run's event log as its page shows it, or where a jump to a seq goes."""

    form: EventLogFilterForm
    rows: list[dict[str, Any]]
    # The first seq the page may show, and where the pages before and after it start.
    start: int
    previous: int | None
    next: int | None
    filtered: bool
    # Events the filters match; every event of the run, unfiltered.
    matching: int
    # A `?seq=N` jump: the address of the page that shows event N, at it.
    jump: str | None = None


def event_log_page(request: HttpRequest, *, tenant: Tenant, run: RunDetail) -> EventLogPage:
    """The page of the log `?log_from`, `?node` and `?kind` ask for; a bad filter is named on the
    page and not applied. Pages follow seq: a page starts at an event, the next after its last."""
    kinds = selectors.run_event_kinds(tenant=tenant, run=run.id)
    form = EventLogFilterForm(request.GET, tenant=tenant, run=run, kinds=kinds)
    form.is_valid()
    node, kind, seq = (form.cleaned_data.get(name) for name in ("node", "kind", "seq"))
    filtered = node is not None or kind is not None
    matching = selectors.run_events(tenant=tenant, run=run.id, node=node, kind=kind)
    if seq is not None:
        if filtered and not matching.filter(seq=seq).exists():
            filtered = False  # the filters hide that event: the jump goes to it in the whole log
        query = request.GET.copy()
        for name in ("seq", "log_from", *(() if filtered else ("node", "kind"))):
            query.pop(name, None)
        # The whole log pages by hundreds, as the diagnostics' links do; a filtered one starts at it.
        query["log_from"] = str(seq if filtered else seq - seq % EVENTS_PER_PAGE)
        return EventLogPage(form, [], 0, None, None, filtered, 0, jump=f"?{query.urlencode()}#event-{seq}")
    last_seq = run.next_seq - 1
    start = _int_param(request, "log_from", default=0, low=0, high=max(0, last_seq))
    page = list(
        matching.filter(seq__gte=start).values_list("seq", "ts", "kind", "node", "payload")[
            : EVENTS_PER_PAGE + 1
        ]
    )
    earlier = []
    if start > 0:
        before = matching.filter(seq__lt=start).order_by("-seq")
        earlier = list(before.values_list("seq", flat=True)[:EVENTS_PER_PAGE])
    return EventLogPage(
        form=form,
        rows=[_event_row(*row) for row in page[:EVENTS_PER_PAGE]],
        start=start,
        previous=earlier[-1] if earlier else None,
        next=page[EVENTS_PER_PAGE][0] if len(page) > EVENTS_PER_PAGE else None,
        filtered=filtered,
        matching=matching.count() if filtered else last_seq + 1,
    )


def drawn_nodes(order: list[str], timeline: Any, *, first: Sequence[str] = ()) -> list[str]:
    """The nodes the full DAG draws: all of them, up to MAX_DRAWN_NODES; past that, `first` (the
    nodes searched for, the focused subgraph's), then the ones that moved first (they tell the
    run's story), then the rest, in graph order.

    A graph may have 10,000 nodes and 100,000 dependencies (SPEC section 2): drawn whole, as SVG,
    its page would be tens of megabytes and take minutes to render. Drawing huge graphs well is
    another matter; here the page stays bounded and says what it left out.
    """
    if len(order) <= MAX_DRAWN_NODES:
        return order
    moved = [
        node_id for node_id in order if timeline.nodes[node_id].changes or timeline.nodes[node_id].attempts
    ]
    return list(dict.fromkeys([*first, *moved, *order]))[:MAX_DRAWN_NODES]


def timeline_rows(order: list[str], states: dict[str, str], attempts: dict[str, int]) -> list[str]:
    """The timeline's nodes: in graph order when they fit on one page; otherwise what went wrong
    first (failed, blocked, still running, retried), then the rest in graph order."""
    if len(order) <= TIMELINE_PAGE:
        return order
    ranks = {"failed": 0, "blocked": 1, "running": 2}

    def rank(node_id: str) -> int:
        return ranks.get(states[node_id], 3 if attempts[node_id] > 1 else 4)

    return sorted(order, key=rank)


def _replay_position(request: HttpRequest, last_seq: int) -> int | None:
    """`?at=N`: the run as it stood after event N; absent (or past the end) means as it stands now."""
    if last_seq < 0 or "at" not in request.GET:
        return None
    at = _int_param(request, "at", default=last_seq, low=0, high=last_seq)
    return None if at == last_seq else at


def _int_param(request: HttpRequest, name: str, *, default: int, low: int, high: int) -> int:
    try:
        value = int(request.GET.get(name, default))
    except ValueError:
        return default
    return min(max(value, low), high)


# Fields every event has, or that the log's own columns already show.
SHOWN_FIELDS = {
    "ts",
    "event",
    "node",
    "from",
    "to",
    "attempt",
    "ok",
    "duration_s",
    "exit_code",
    "error",
    "run_id",
}


def _event_row(
    seq: int, ts: datetime, kind: str, node: str | None, payload: dict[str, Any]
) -> dict[str, Any]:
    extra = {k: v for k, v in payload.items() if k not in SHOWN_FIELDS}
    if kind == "run_start":
        extra.pop("graph", None)
        extra.pop("producer", None)
    return {
        "seq": seq,
        "ts": ts,
        "kind": kind,
        "node": node,
        "what": _event_words(kind, payload),
        "error": payload.get("error") if kind == "node_attempt" else None,
        "extra": extra,
    }


def _event_words(kind: str, payload: dict[str, Any]) -> str:
    if kind == "transition":
        return f"{payload.get('from')} → {payload.get('to')} (attempt {payload.get('attempt')})"
    if kind == "node_attempt":
        verdict = "ok" if payload.get("ok") else "failed"
        took = f"{payload.get('duration_s')}s"
        return f"attempt {payload.get('attempt')} {verdict} in {took}, exit {payload.get('exit_code')}"
    if kind == "run_end":
        return f"exit code {payload.get('exit_code')}"
    if kind == "run_start":
        return f"by {payload['producer']}" if payload.get("producer") else ""
    return ""


def _short_event(seq: int, kind: str, node: str | None, payload: dict[str, Any]) -> str:
    return " ".join(filter(None, (f"#{seq}", kind, node, _event_words(kind, payload))))


def _event_label(events: Sequence[EventRow], seq: int) -> str:
    for row_seq, _ts, kind, node, payload in events:
        if row_seq == seq:
            return _short_event(row_seq, kind, node, payload)
    return ""


def run_node_page(request: HttpRequest, run_id: str, node_id: str) -> HttpResponse:
    """One node in one run: what clicking it in the run's DAG or timeline opens."""
    tenant = tenant_current()
    try:
        detail = selectors.run_node_detail(tenant=tenant, run_id=run_id, node_id=node_id)
    except Run.DoesNotExist:
        deletion = run_deletion(tenant=tenant, run_id=run_id) if run_id_valid(run_id) else None
        if deletion is not None:
            return run_deleted_page(request, deletion)
        raise Http404(f"There is no run named “{run_id}”.") from None
    except selectors.NodeNotInRun:
        raise Http404(f"Run “{run_id}” has no node named “{node_id}”.") from None
    attempts = detail.node.attempts
    context = {
        "nav": "runs",
        "run": detail.run,
        "node": detail.node,
        "detail": detail,
        "first_start": attempts[0].start if attempts else None,
        "last_end": attempts[-1].end if attempts else None,
        "events": [_event_row(*row) for row in detail.events],
        "events_shown": selectors.NODE_EVENTS_SHOWN,
    }
    return render(request, "runs/run_node.html", context)


def node_page(request: HttpRequest, node_id: str) -> HttpResponse:
    tenant = tenant_current()
    last = _int_param(request, "last", default=50, low=1, high=NODE_RUN_CHOICES[-1])
    rows = selectors.node_runs(tenant=tenant, node_id=node_id, limit=last)
    if not rows:
        raise Http404(f"No run has a node named “{node_id}”.")
    counts = {
        verdict: sum(1 for r in rows if r.verdict == verdict)
        for verdict in ("clean", "flaked", "failed", "blocked", "pending", "running")
    }
    ran = sum(1 for r in rows if r.attempts > 0)
    context = {
        "nav": "nodes",
        "node_id": node_id,
        "rows": rows,
        "strip": list(reversed(rows)),
        "counts": counts,
        "ran": ran,
        "attempts": sum(r.attempts for r in rows),
        "flake_rate": counts["flaked"] / ran if ran else 0.0,
        "failure_rate": counts["failed"] / ran if ran else 0.0,
        "last": last,
        "last_choices": NODE_RUN_CHOICES,
    }
    return render(request, "runs/node.html", context)


def node_index(request: HttpRequest) -> HttpResponse:
    last = _int_param(request, "last", default=100, low=1, high=1000)
    stats = selectors.node_stats(tenant=tenant_current(), last_runs=last)
    context = {"nav": "nodes", "stats": stats, "last": last, "last_choices": (50, 100, 200, 500, 1000)}
    return render(request, "runs/nodes.html", context)


def run_compare_page(request: HttpRequest, run_id: str, other_id: str) -> HttpResponse:
    """Run `other_id` beside run `run_id`, node by node, and the first event where they part ways."""
    tenant = tenant_current()
    if run_id == other_id:
        try:
            run = selectors.run_get(tenant=tenant, run_id=run_id)
        except Run.DoesNotExist:
            return _no_run_to_compare(request, run_id)
        (row,) = selectors.run_rows([run], tenant=tenant, now=timezone.now())
        previous = selectors.run_previous_of_graph(tenant=tenant, run=row)
        return render(request, "runs/compare.html", {"nav": "runs", "same": row, "previous": previous})
    try:
        comparison = selectors.run_comparison(tenant=tenant, run_a=run_id, run_b=other_id)
    except Run.DoesNotExist as missing:
        return _no_run_to_compare(request, str(missing))
    only_differences = request.GET.get("show") == "differences"
    nodes = [node for node in comparison.nodes if node.differs] if only_differences else comparison.nodes
    divergence = comparison.divergence
    context = {
        "nav": "runs",
        "comparison": comparison,
        "a": comparison.a,
        "b": comparison.b,
        "nodes": Paginator(nodes, COMPARED_NODES_PER_PAGE).get_page(request.GET.get("page")),
        "only_differences": only_differences,
        "divergence": divergence,
        # Each run's event where the logs part ways, with its length, for a log that ended before.
        "divergence_sides": [
            ("a", comparison.a, divergence.a, comparison.events_a),
            ("b", comparison.b, divergence.b, comparison.events_b),
        ]
        if divergence
        else [],
    }
    return render(request, "runs/compare.html", context)


def _no_run_to_compare(request: HttpRequest, run_id: str) -> HttpResponse:
    """A run removed by retention says so (410), as its own page does; any other is a 404 naming it."""
    deletion = run_deletion(tenant=tenant_current(), run_id=run_id) if run_id_valid(run_id) else None
    if deletion is not None:
        return run_deleted_page(request, deletion)
    raise Http404(f"There is no run named “{run_id}” to compare.")


# ---------------------------------------------------------------- status badges


class BadgeCreateForm(forms.Form):
    pattern = forms.CharField(
        max_length=64,
        label="Run id pattern",
        help_text="e.g. nightly-* : the badge shows the latest complete run whose id matches",
        widget=forms.TextInput({"autocomplete": "off", "spellcheck": "false"}),
    )

    def clean_pattern(self) -> str:
        pattern: str = self.cleaned_data["pattern"].strip()
        if not badges.BADGE_PATTERN.fullmatch(pattern):
            raise forms.ValidationError(f"Not a run id pattern: use {badges.BADGE_PATTERN_RULE}.")
        return pattern


# A new badge's URL is shown once, in the answer to the POST: no cache may keep it.
@never_cache
@require_http_methods(["GET", "POST"])
@managers_only_in_cloud
def badge_list(request: HttpRequest) -> HttpResponse:
    tenant = tenant_current()
    form = BadgeCreateForm(request.POST or None)
    created = None
    status = 200
    if request.method == "POST":
        if form.is_valid():
            user = request.user if request.user.is_authenticated else None
            badge, token = badges.badge_create(
                tenant=tenant, pattern=form.cleaned_data["pattern"], created_by=user
            )
            url = request.build_absolute_uri(reverse("badge", args=[token]))
            created = {"badge": badge, "url": url, "json_url": f"{url}?format=json"}
            form = BadgeCreateForm()
        else:
            status = 400
    context = {"nav": "badges", "form": form, "created": created, "badges": badges.badge_list(tenant=tenant)}
    return render(request, "runs/badges.html", context, status=status)


@require_POST
@managers_only_in_cloud
def badge_revoke(request: HttpRequest, badge_id: int) -> HttpResponse:
    badge = badges.badge_get(tenant=tenant_current(), badge_id=badge_id)
    if badge is None:
        # Another workspace's badge is answered exactly like one that does not exist.
        raise Http404("There is no such badge in this workspace.")
    badges.badge_revoke(badge=badge)
    return redirect("badges")


@require_GET
def badge_serve(request: HttpRequest, token: str) -> HttpResponse:
    """A badge, to anyone with its URL: SVG, or shields.io's endpoint JSON with `?format=json`."""
    badge_format = request.GET.get("format", "svg")
    if badge_format not in ("svg", "json"):
        return HttpResponseBadRequest("format: svg (the default) or json", content_type="text/plain")
    badge = badges.badge_find(token)
    if badge is None:
        raise Http404("There is no such badge, or it was revoked.")
    status = badges.badge_status(badge)
    if badge_format == "json":
        response: HttpResponse = JsonResponse(
            {
                "schemaVersion": 1,
                "label": status.label,
                "message": status.message,
                "color": status.colour.removeprefix("#"),
            }
        )
    else:
        label_text, message_text = badges.text_width(status.label), badges.text_width(status.message)
        label_width, message_width = label_text + 10, message_text + 10
        context = {
            "status": status,
            "label_colour": badges.LABEL_COLOUR,
            "width": label_width + message_width,
            "label_width": label_width,
            "message_width": message_width,
            "label_x": label_width / 2,
            "message_x": label_width + message_width / 2,
            "label_text": label_text,
            "message_text": message_text,
        }
        response = render(request, "runs/badge.svg", context, content_type="image/svg+xml")
    # READMEs are read often; a run's result changes at most as often as runs end.
    response["Cache-Control"] = "max-age=60"
    return response
