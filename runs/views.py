"""The pages: run history, one run's replay, and a node across runs.

Server-rendered and readable without JavaScript: every picture is SVG drawn here, and replay works
as a plain form (`?at=N`); `static/replay.js` only makes the scrubber move without a reload. Every
query goes through `runs.selectors` with the current tenant.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from functools import wraps
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
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
from runs.pictures import dag_picture, gantt_picture, history_chart, seconds_label
from runs.read_model import RunDetail
from runs.reduction import run_id_valid
from runs.timeline import EventRow
from tenants.context import tenant_current

EVENTS_PER_PAGE = 100
MAX_DRAWN_NODES = 300
# Where the pages' live updates come from (kahn_site.asgi routes it; SPEC section 7).
LIVE_SOCKET_PATH = "/ws/live"
NODE_RUN_CHOICES = (20, 50, 100, 200)

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
        "chart": history_chart(rows, now),
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

    at = _replay_position(request, timeline.last_seq)
    if at is None:
        states = {node.id: node.state for node in run.nodes}
        attempts = {node.id: node.attempt_count for node in run.nodes}
    else:
        states = {node_id: timeline.nodes[node_id].state_at(at) for node_id in order}
        attempts = {node_id: timeline.nodes[node_id].attempts_at(at) for node_id in order}

    log_from = _int_param(request, "log_from", default=0, low=0, high=max(0, timeline.last_seq))
    log_page = selectors.run_events(tenant=tenant, run=run.id, after_seq=log_from - 1, limit=EVENTS_PER_PAGE)
    log = [_event_row(*row) for row in log_page.values_list("seq", "ts", "kind", "node", "payload")]

    drawn = drawn_nodes(order, timeline)
    gantt = gantt_picture(timeline, drawn, states, at)
    context = {
        "nav": "runs",
        "run": run,
        "at": at,
        "last_seq": timeline.last_seq,
        "at_label": _event_label(events, at if at is not None else timeline.last_seq),
        "dag": dag_picture(timeline, drawn, states, attempts),
        "node_count": len(order),
        "undrawn": len(order) - len(drawn),
        "gantt": gantt,
        "replay": {
            "lastSeq": timeline.last_seq,
            "eventX": gantt.event_x,
            "labels": [_short_event(seq, kind, node, facts) for seq, _ts, kind, node, facts in events],
        },
        "diagnostics": run.diagnostics,
        "mismatch": run.summary_mismatch,
        "log": log,
        "log_from": log_from,
        "log_previous": max(0, log_from - EVENTS_PER_PAGE) if log_from > 0 else None,
        "log_next": log_from + EVENTS_PER_PAGE if log_from + EVENTS_PER_PAGE <= timeline.last_seq else None,
        "log_paged": timeline.last_seq >= EVENTS_PER_PAGE,
        "producer": next((f.get("producer") for _s, _t, kind, _n, f in events if kind == "run_start"), None),
        "elapsed": _elapsed(run),
        # static/live.js: events after the last one drawn, and the page's parts redrawn as they come.
        "live": {
            "socket": LIVE_SOCKET_PATH,
            "runId": run.run_id,
            "afterSeq": timeline.last_seq,
            "complete": run.complete,
        },
    }
    return render(request, "runs/run.html", context)


def drawn_nodes(order: list[str], timeline: Any) -> list[str]:
    """The nodes the pictures draw: all of them, up to MAX_DRAWN_NODES; past that, the ones that
    moved first (they tell the run's story), then the rest, in graph order.

    A graph may have 10,000 nodes and 100,000 dependencies (SPEC section 2): drawn whole, as SVG,
    its page would be tens of megabytes and take minutes to render. Drawing huge graphs well is
    another matter; here the page stays bounded and says what it left out.
    """
    if len(order) <= MAX_DRAWN_NODES:
        return order
    moved = [
        node_id for node_id in order if timeline.nodes[node_id].changes or timeline.nodes[node_id].attempts
    ]
    if len(moved) >= MAX_DRAWN_NODES:
        return moved[:MAX_DRAWN_NODES]
    chosen = set(moved)
    return (moved + [node_id for node_id in order if node_id not in chosen])[:MAX_DRAWN_NODES]


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


def _elapsed(run: RunDetail) -> str | None:
    if run.duration_s is not None:
        return seconds_label(run.duration_s)
    if run.started is not None and run.last_event_at is not None:
        return seconds_label((run.last_event_at - run.started).total_seconds())
    return None


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
    words = _event_words(kind, payload)
    return " ".join(part for part in (f"#{seq}", kind, node or "", words) if part)


def _event_label(events: Sequence[EventRow], seq: int) -> str:
    for row_seq, _ts, kind, node, payload in events:
        if row_seq == seq:
            return _short_event(row_seq, kind, node, payload)
    return ""


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


# ---------------------------------------------------------------- status badges


def badge_managers_only(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """The Badges page publishes a workspace's results: in cloud mode its owners and admins only
    (members get a 403 page, as on the API keys page); OSS has one operator, who may."""

    @wraps(view)
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        tenant = tenant_current()  # none: the tenant middleware asks to sign in
        if settings.CLOUD:
            membership = getattr(request, "membership", None)
            if membership is None or not membership.manages_tenant:
                return render(request, "tenants/managers_only.html", {"tenant": tenant}, status=403)
        return view(request, *args, **kwargs)

    return guarded


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
@badge_managers_only
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
@badge_managers_only
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
