"""The read API (SPEC section 6): run history, one run with its DAG, attempts and diagnostics, its
events in `seq` order, and the producer's graph and summary.

Views stay thin: validate the query with an Input serializer, ask a selector (always with the current
tenant), answer with an Output serializer. Errors leave in the shape of SPEC section 11
(`kahn_site.api_errors`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any, cast

from asgiref.sync import sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.asgi import ASGIRequest
from django.core.validators import ProhibitNullCharactersValidator
from django.http import HttpResponse, StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
    extend_schema_serializer,
    inline_serializer,
)
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from kahn_site.api_errors import ApiError, InvalidQuery, RunNotFound
from retention.errors import run_deleted_error
from runs import exports, selectors
from runs.metrics import tenant_metrics_text
from runs.models import Run
from runs.pagination import RunCursorPagination
from runs.read_model import (
    RUN_DETAIL_SHOWN,
    RUN_ROW_SHOWN,
    RunDetail,
    RunRow,
    run_detail_data,
    run_row_data,
    timestamp,
)
from runs.reduction import MAX_SEQ, run_id_valid
from tenants.context import tenant_current

MAX_EVENTS_PER_PAGE = 1000
DEFAULT_EVENTS_PER_PAGE = 100


class TimestampField(serializers.DateTimeField):
    # None for None, as DRF's own DateTimeField answers (its stubs say str).
    def to_representation(self, value: datetime | None) -> str | None:  # type: ignore[override]
        return timestamp(value)


class TextParameter(serializers.RegexField):
    """Free text in a query; the pattern tells clients what is refused: NUL, which no id can hold."""

    def __init__(self, **kwargs: Any) -> None:
        # Taken as sent: empty means "no filter", and whitespace may be part of what is searched.
        super().__init__(r"^[^\x00]*$", trim_whitespace=False, allow_blank=True, **kwargs)
        # The pattern already refuses NUL; one message for it is enough.
        self.validators = [v for v in self.validators if not isinstance(v, ProhibitNullCharactersValidator)]


class ErrorSerializer(serializers.Serializer):
    """`{"error": {...}}`: the shape of every error (SPEC section 11)."""

    @extend_schema_serializer(component_name="ErrorBody")
    class Body(serializers.Serializer):
        code = serializers.CharField(help_text="stable, for machines: `run_not_found`, `invalid_query`, …")
        message = serializers.CharField(help_text="a sentence, for people")
        details = serializers.DictField(
            help_text="for `invalid_query`: `errors`, a list of `{index, field, message}`; for "
            "`run_deleted`: the retention record (`action`, `at`, `reason`, `plan`, `days`, `by`, "
            "`restorable_until`, …)"
        )

    error = Body()


ERRORS = {400: ErrorSerializer, 404: ErrorSerializer, 410: ErrorSerializer}
RUN_ID = OpenApiParameter(
    "run_id", OpenApiTypes.STR, OpenApiParameter.PATH, description="the run's id", examples=[]
)


def _missing_run(run_id: str) -> ApiError:
    """The answer for a run the tenant does not have: a run retention removed is gone, not unknown,
    so 410 `run_deleted` with when and why (SPEC section 9); any other, 404 `run_not_found`."""
    if run_id_valid(run_id):
        deleted = run_deleted_error(tenant=tenant_current(), run_id=run_id)
        if deleted is not None:
            return deleted
    return RunNotFound(run_id)


def _run_or_404(run_id: str) -> Run:
    try:
        return selectors.run_get(tenant=tenant_current(), run_id=run_id)
    except Run.DoesNotExist:
        raise _missing_run(run_id) from None


def _validated(serializer_class: type[serializers.Serializer], request: Request) -> dict[str, Any]:
    serializer = serializer_class(data=request.query_params)
    if not serializer.is_valid():
        raise InvalidQuery.from_serializer_errors(serializer.errors)
    return serializer.validated_data


class DiagnosticCountsSerializer(serializers.Serializer):
    error = serializers.IntegerField()
    warning = serializers.IntegerField()
    info = serializers.IntegerField()


class RunRowSerializer(serializers.Serializer):
    """One row of run history: SPEC section 4's fields, `status`, diagnostic counts, last event."""

    run_id = serializers.CharField()
    status = serializers.ChoiceField(choices=selectors.STATUSES)
    outcome = serializers.ChoiceField(choices=selectors.OUTCOMES, allow_null=True)
    started = TimestampField(allow_null=True)
    ended = TimestampField(allow_null=True)
    duration_s = serializers.FloatField(allow_null=True)
    total_nodes = serializers.IntegerField()
    done = serializers.IntegerField()
    failed = serializers.IntegerField()
    blocked = serializers.IntegerField()
    total_attempts = serializers.IntegerField()
    flake_retries = serializers.IntegerField()
    exit_code = serializers.IntegerField(allow_null=True)
    failed_nodes = serializers.ListField(child=serializers.CharField())
    node_attempts = serializers.DictField(child=serializers.IntegerField())
    diagnostic_counts = serializers.SerializerMethodField()
    last_event_at = TimestampField(allow_null=True)

    @extend_schema_field(DiagnosticCountsSerializer)
    def get_diagnostic_counts(self, row: RunRow) -> dict[str, int]:
        return row.diagnostic_counts

    def to_representation(self, row: RunRow) -> dict[str, Any]:
        # The fields above describe the row for the schema; the row itself is built by the read
        # model, which live messages share without DRF. Walking the fields one by one would cost
        # more than the query behind a page of runs. A test holds the two equal for every sample run.
        return run_row_data(row)


if tuple(RunRowSerializer._declared_fields) != RUN_ROW_SHOWN:
    raise ImproperlyConfigured("RunRowSerializer's fields must be runs.read_model.RUN_ROW_SHOWN, in order")


def run_filters(query: dict[str, Any]) -> selectors.RunFilters:
    """The run list's filters among a validated query's parameters."""
    filter_names = selectors.RunFilters.__dataclass_fields__
    return selectors.RunFilters(**{k: v for k, v in query.items() if k in filter_names})


class RunListApi(APIView):
    pagination_class = RunCursorPagination

    class InputSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=selectors.STATUSES, required=False)
        outcome = serializers.ChoiceField(choices=selectors.OUTCOMES, required=False)
        q = TextParameter(required=False, max_length=64, help_text="run id contains (any case)")
        started_after = serializers.DateTimeField(required=False, help_text="started at or after")
        started_before = serializers.DateTimeField(required=False, help_text="started before")
        node = TextParameter(required=False, max_length=200, help_text="runs that have this node")
        failed_node = TextParameter(required=False, max_length=200, help_text="runs where it failed")
        page_size = serializers.IntegerField(
            required=False, min_value=1, max_value=RunCursorPagination.max_page_size
        )
        cursor = serializers.CharField(required=False)

    OutputSerializer = RunRowSerializer

    @extend_schema(
        operation_id="runs_list",
        parameters=[InputSerializer(partial=True)],
        responses={200: OutputSerializer(many=True), 400: ErrorSerializer},
        summary="Run history, newest first",
    )
    def get(self, request: Request) -> Response:
        tenant = tenant_current()
        filters = run_filters(_validated(self.InputSerializer, request))
        paginator = self.pagination_class()
        now = timezone.now()  # one clock for the status filter and the statuses shown
        runs = selectors.run_list(tenant=tenant, filters=filters, now=now)
        page = paginator.paginate_queryset(runs, request, self)
        rows = selectors.run_rows(page, tenant=tenant, now=now)
        return paginator.get_paginated_response(self.OutputSerializer(rows, many=True).data)


class AttemptSerializer(serializers.Serializer):
    attempt = serializers.IntegerField()
    start = TimestampField()
    end = TimestampField(allow_null=True, help_text="null while the attempt is open")
    duration_s = serializers.FloatField(allow_null=True)
    ok = serializers.BooleanField(allow_null=True, help_text="null while open or when never recorded")
    exit_code = serializers.IntegerField(allow_null=True)
    error = serializers.CharField(allow_null=True)
    start_seq = serializers.IntegerField(help_text="the event that began it")
    end_seq = serializers.IntegerField(allow_null=True, help_text="the event that ended it")


class NodeSerializer(serializers.Serializer):
    id = serializers.CharField()
    state = serializers.ChoiceField(choices=("pending", "running", "done", "failed", "blocked"))
    deps = serializers.ListField(child=serializers.CharField())
    attempts = AttemptSerializer(many=True)


class DiagnosticSerializer(serializers.Serializer):
    code = serializers.CharField()
    severity = serializers.ChoiceField(choices=("error", "warning", "info"))
    seq = serializers.IntegerField(allow_null=True, help_text="the event it concerns, if any")
    line = serializers.IntegerField(allow_null=True, help_text="the log line it concerns, if not an event")
    message = serializers.CharField()
    details = serializers.DictField()


class RunDetailApi(APIView):
    @extend_schema_serializer(component_name="RunDetail")
    class OutputSerializer(RunRowSerializer):
        graph = serializers.DictField(allow_null=True, help_text="the DAG, as graph.json has it")
        nodes = NodeSerializer(many=True)
        diagnostics = DiagnosticSerializer(many=True)

        def to_representation(self, detail: RunRow) -> dict[str, Any]:
            # Built by the read model, as the row is: a long run has thousands of attempt fields.
            return run_detail_data(cast(RunDetail, detail))

    @extend_schema(
        operation_id="runs_retrieve",
        parameters=[RUN_ID],
        responses={200: OutputSerializer, 404: ErrorSerializer, 410: ErrorSerializer},
        summary="One run: its row, DAG, per-node attempts and diagnostics",
    )
    def get(self, request: Request, run_id: str) -> Response:
        try:
            detail = selectors.run_detail(tenant=tenant_current(), run_id=run_id)
        except Run.DoesNotExist:
            raise _missing_run(run_id) from None
        return Response(self.OutputSerializer(detail).data)


if tuple(RunDetailApi.OutputSerializer._declared_fields) != RUN_DETAIL_SHOWN:
    raise ImproperlyConfigured("RunDetailApi's fields must be runs.read_model.RUN_DETAIL_SHOWN, in order")


class RunEventsApi(APIView):
    class InputSerializer(serializers.Serializer):
        after_seq = serializers.IntegerField(
            required=False,
            default=-1,
            min_value=-1,
            max_value=MAX_SEQ,
            help_text="events with a greater seq",
        )
        limit = serializers.IntegerField(
            required=False, default=DEFAULT_EVENTS_PER_PAGE, min_value=1, max_value=MAX_EVENTS_PER_PAGE
        )

    @extend_schema_serializer(component_name="EventPage")
    class OutputSerializer(serializers.Serializer):
        results = serializers.ListField(
            child=inline_serializer(
                "Event",
                fields={
                    "seq": serializers.IntegerField(),
                    "ts": serializers.CharField(),
                    "event": serializers.CharField(),
                },
            ),
            help_text="each event as the producer wrote it, with its `seq`; unknown fields are kept",
        )
        next_seq = serializers.IntegerField(
            help_text="the seq after the last one returned: pass it minus one as after_seq"
        )

    @extend_schema(
        operation_id="runs_events_list",
        parameters=[RUN_ID, InputSerializer],
        responses={200: OutputSerializer, **ERRORS},
        summary="A run's events in seq (append) order",
    )
    def get(self, request: Request, run_id: str) -> Response:
        query = _validated(self.InputSerializer, request)
        run = _run_or_404(run_id)
        events = selectors.run_events(
            tenant=tenant_current(), run=run, after_seq=query["after_seq"], limit=query["limit"]
        ).values_list("seq", "payload")
        results = [{**payload, "seq": seq} for seq, payload in events]
        next_seq = results[-1]["seq"] + 1 if results else query["after_seq"] + 1
        return Response({"results": results, "next_seq": next_seq})


class GraphNotFound(ApiError):
    status_code = 404
    code = "graph_not_found"


class SummaryNotFound(ApiError):
    status_code = 404
    code = "summary_not_found"


class RunGraphApi(APIView):
    @extend_schema(
        operation_id="runs_graph_retrieve",
        parameters=[RUN_ID],
        responses={200: OpenApiTypes.OBJECT, 404: ErrorSerializer, 410: ErrorSerializer},
        summary="The run's DAG, as graph.json (or run_start) gave it",
    )
    def get(self, request: Request, run_id: str) -> Response:
        run = _run_or_404(run_id)
        graph = run.graph  # graph.json, a PUT, or the one run_start carried (runs.services)
        if graph is None:
            raise GraphNotFound(f"run {run_id!r} has no graph yet", details={"run_id": run_id})
        return Response(graph)


class RunSummaryApi(APIView):
    @extend_schema(
        operation_id="runs_summary_retrieve",
        parameters=[RUN_ID],
        responses={200: OpenApiTypes.OBJECT, 404: ErrorSerializer, 410: ErrorSerializer},
        summary="The producer's summary.json, if it wrote one",
    )
    def get(self, request: Request, run_id: str) -> Response:
        run = _run_or_404(run_id)
        if run.summary is None:
            raise SummaryNotFound(
                f"the producer wrote no summary for run {run_id!r}", details={"run_id": run_id}
            )
        return Response(run.summary)


def _streamed(
    request: Request, chunks: Iterator[bytes] | Iterator[str], content_type: str
) -> StreamingHttpResponse:
    """A response that sends `chunks` as they are made, under either server: Django buffers a
    synchronous iterator whole under ASGI (daphne, `manage.py serve`), and an asynchronous one whole
    under WSGI, so each gets its own kind. Under ASGI each chunk is made in the request's own thread,
    where its database connection lives."""
    if isinstance(request._request, ASGIRequest):
        return StreamingHttpResponse(_each_in_thread(chunks), content_type=content_type)
    return StreamingHttpResponse(chunks, content_type=content_type)


async def _each_in_thread(chunks: Iterator[Any]) -> AsyncIterator[Any]:
    end = object()
    next_chunk = sync_to_async(lambda: next(chunks, end), thread_sensitive=True)
    while (chunk := await next_chunk()) is not end:
        yield chunk


class AnswersItsOwnMediaType:
    """An endpoint whose success is a file of its own kind (CSV, a tar.gz, Prometheus' text), not a
    rendering the client chooses: DRF's negotiation is skipped (it would also read `?format=` as a
    renderer's name), and its errors are JSON whatever the client accepts."""

    def perform_content_negotiation(self, request: Request, force: bool = False) -> tuple[Any, str]:
        renderer = self.get_renderers()[0]  # type: ignore[attr-defined]
        return renderer, renderer.media_type


class ExportFormat(serializers.ChoiceField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=("csv", "ndjson"), help_text="`csv` (with a header) or `ndjson`", **kwargs)


class RunExportApi(AnswersItsOwnMediaType, APIView):
    """The run list, whole, as a file: the same filters, every matching run, newest first."""

    class InputSerializer(RunListApi.InputSerializer):
        format = ExportFormat()
        # The whole list, not a page of it.
        page_size = None  # type: ignore[assignment]  # DRF's way to leave out an inherited field
        cursor = None  # type: ignore[assignment]

    MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "ndjson": "application/x-ndjson"}

    @extend_schema(
        operation_id="runs_export",
        parameters=[InputSerializer],
        responses={
            (200, "text/csv"): OpenApiTypes.STR,
            (200, "application/x-ndjson"): OpenApiTypes.STR,
            (400, "application/json"): ErrorSerializer,
        },
        summary="Every run the filters match, newest first, as CSV or NDJSON (streamed)",
        description="The columns and objects are the rows of `GET runs/`; in CSV, lists and maps "
        "(`failed_nodes`, `node_attempts`, `diagnostic_counts`) are JSON in their cell and null is empty.",
    )
    def get(self, request: Request) -> StreamingHttpResponse:
        tenant = tenant_current()
        query = _validated(self.InputSerializer, request)
        now = timezone.now()
        runs = selectors.run_list(tenant=tenant, filters=run_filters(query), now=now)
        batches = exports.run_row_batches(runs, tenant=tenant, now=now)
        export_format = query["format"]
        content = exports.rows_csv(batches) if export_format == "csv" else exports.rows_ndjson(batches)
        response = _streamed(request, content, self.MEDIA_TYPES[export_format])
        response["Content-Disposition"] = f'attachment; filename="runs.{export_format}"'
        return response


class RunArchiveApi(AnswersItsOwnMediaType, APIView):
    """One run as the archive folder it could have come from, for `ingest_archive` to read."""

    @extend_schema(
        operation_id="runs_archive_retrieve",
        parameters=[RUN_ID],
        responses={
            (200, "application/gzip"): OpenApiTypes.BINARY,
            (404, "application/json"): ErrorSerializer,
            (410, "application/json"): ErrorSerializer,
        },
        summary="The run as a tar.gz of its archive folder: transitions.jsonl, graph.json, summary.json",
        description="`<run_id>/transitions.jsonl` holds each stored event as stored, in seq order; "
        "lines the import found malformed were never stored and are not in it. Unpacked under an "
        "archive's `runs/`, `manage.py ingest_archive` reads it back as the same run.",
    )
    def get(self, request: Request, run_id: str) -> StreamingHttpResponse:
        tenant = tenant_current()
        run = _run_or_404(run_id)
        members = exports.run_archive_members(run, tenant=tenant)
        mtime = (run.last_event_at or run.created_at).timestamp()
        response = _streamed(request, exports.tar_gz(run.run_id, members, mtime=mtime), "application/gzip")
        response["Content-Disposition"] = f'attachment; filename="{run.run_id}.tar.gz"'
        return response


class TenantMetricsApi(AnswersItsOwnMediaType, APIView):
    """The tenant's figures for Prometheus, from its stored rows (runs.metrics)."""

    @extend_schema(
        operation_id="metrics_retrieve",
        responses={(200, "text/plain"): OpenApiTypes.STR},
        summary="The tenant's metrics in Prometheus' text format",
        description="Runs by status and outcome, run durations (a histogram), attempts and flake retries "
        'of the 200 nodes with most attempts in the last 7 days (the rest as `node="_other"`), events '
        "stored, diagnostics by severity, alert delivery attempts by channel and result. Computed from "
        "what is stored now: they fall when retention removes runs.",
    )
    def get(self, request: Request) -> HttpResponse:
        text = tenant_metrics_text(tenant=tenant_current(), now=timezone.now())
        return HttpResponse(text, content_type=CONTENT_TYPE_PLAIN_0_0_4)
