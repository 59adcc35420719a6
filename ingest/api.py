"""The ingest API (SPEC section 5): producers POST events and PUT a run's graph and summary.

Each path also answers GET through the read API's view it extends, so one URL has one view class.
The body is read raw, not through DRF's parsers: limits, gzip, NDJSON and the contract's error codes
are the ingest service's to decide (ingest.bodies).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import orjson
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiRequest, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle

from ingest import services
from ingest.bodies import request_body
from ingest.ratelimit import TenantIngestRateThrottle, ratelimit_headers
from kahn_site import metrics
from kahn_site.api_errors import ApiError, RunDeleted, api_error_from
from retention.errors import run_deleted_error
from runs.api import ERRORS, RUN_ID, ErrorSerializer, RunEventsApi, RunGraphApi, RunSummaryApi
from runs.errors import Refused, RunDeletedError
from runs.reduction import run_id_valid
from tenants.context import tenant_current
from tenants.models import Tenant
from tenants.permissions import INGEST


class InvalidRunId(ApiError):
    code = "invalid_run_id"

    def __init__(self, run_id: str) -> None:
        super().__init__(
            "a run id is 1 to 64 letters, digits, '_' or '-', starting with a letter or digit",
            details={"run_id": run_id[:100]},
        )


def _checked_run_id(run_id: str) -> str:
    if not run_id_valid(run_id):
        raise InvalidRunId(run_id)
    return run_id


@contextmanager
def _refusals_answered(tenant: Tenant) -> Iterator[None]:
    """The services' refusals as the contract's answers: each code with its status, and a run
    retention removed as `410 run_deleted`, saying when and why."""
    try:
        yield
    except RunDeletedError as exc:
        raise run_deleted_error(tenant=tenant, run_id=exc.run_id) or RunDeleted(
            exc.message, details=exc.details
        ) from None
    except Refused as exc:
        raise api_error_from(exc) from None


# What a producer's request can be refused with, besides the read API's 400 and 404.
INGEST_ERRORS = {
    **ERRORS,
    409: ErrorSerializer,
    413: ErrorSerializer,
    415: ErrorSerializer,
    429: ErrorSerializer,
}

Receipt = inline_serializer(
    "Receipt",
    fields={
        "run_id": serializers.CharField(),
        "accepted": serializers.IntegerField(help_text="events stored by this request"),
        "duplicates": serializers.IntegerField(help_text="events of this request already stored (retries)"),
        "next_seq": serializers.IntegerField(help_text="the seq the next batch starts at"),
    },
)


class IngestThrottled:
    """The producer's writes spend the tenant's rate budget; reads on the same paths do not."""

    throttle_classes: Sequence[type[BaseThrottle]] = [TenantIngestRateThrottle]

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]
        for name, value in ratelimit_headers(request).items():
            response[name] = value
        return response


class RunEventsEndpoint(IngestThrottled, RunEventsApi):
    # Writes need an API key with the ingest scope; a browser session never writes (tenants.permissions).
    key_scopes = {"POST": INGEST}

    @extend_schema(
        operation_id="runs_events_create",
        parameters=[RUN_ID],
        request=OpenApiRequest(
            OpenApiTypes.BYTE,
            examples=[
                OpenApiExample(
                    "NDJSON",
                    media_type="application/x-ndjson",
                    value='{"seq":0,"ts":"2026-11-20T10:00:00.000Z","event":"run_start","run_id":"run_x"}\n',
                )
            ],
        ),
        responses={200: Receipt, **INGEST_ERRORS},
        summary="Append a batch of events (NDJSON or a JSON array), all of it or none of it",
    )
    def post(self, request: Request, run_id: str) -> Response:
        _checked_run_id(run_id)
        tenant = tenant_current()
        with _refusals_answered(tenant):
            batch = services.events_parse(request_body(request), request.content_type or "")
            receipt = services.run_append_batch(tenant=tenant, run_id=run_id, batch=batch)
        metrics.INGEST_EVENTS.labels("accepted").inc(receipt.accepted)
        metrics.INGEST_EVENTS.labels("duplicate").inc(receipt.duplicates)
        return Response(
            {
                "run_id": receipt.run_id,
                "accepted": receipt.accepted,
                "duplicates": receipt.duplicates,
                "next_seq": receipt.next_seq,
            }
        )


def _document(request: Request, kind: str) -> dict[str, Any]:
    media_type = (request.content_type or "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise services.UnsupportedMediaType(
            f"send the {kind} as application/json, not {media_type or 'no content type'}"
        )
    body = request_body(request)
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise services.InvalidBody(
            f"the {kind} is not JSON", [{"index": None, "field": "", "message": str(exc)}]
        ) from None
    if not isinstance(document, dict):
        raise services.InvalidBody(
            f"the {kind} is a JSON object", [{"index": None, "field": "", "message": "not an object"}]
        )
    return document


def _put(request: Request, run_id: str, kind: str) -> Response:
    _checked_run_id(run_id)
    tenant = tenant_current()
    with _refusals_answered(tenant):
        document = _document(request, kind)
        written = services.run_put_document(tenant=tenant, run_id=run_id, kind=kind, document=document)
    return Response({"run_id": run_id, "written": written})


Written = inline_serializer(
    "DocumentReceipt",
    fields={
        "run_id": serializers.CharField(),
        "written": serializers.BooleanField(help_text="false when the same document was already stored"),
    },
)


class RunGraphEndpoint(IngestThrottled, RunGraphApi):
    key_scopes = {"PUT": INGEST}

    @extend_schema(
        operation_id="runs_graph_update",
        parameters=[RUN_ID],
        request=OpenApiTypes.OBJECT,
        responses={200: Written, **INGEST_ERRORS},
        summary="Write the run's DAG once (the same body again is fine)",
    )
    def put(self, request: Request, run_id: str) -> Response:
        return _put(request, run_id, "graph")


class RunSummaryEndpoint(IngestThrottled, RunSummaryApi):
    key_scopes = {"PUT": INGEST}

    @extend_schema(
        operation_id="runs_summary_update",
        parameters=[RUN_ID],
        request=OpenApiTypes.OBJECT,
        responses={200: Written, **INGEST_ERRORS},
        summary="Write the producer's summary once (the same body again is fine)",
    )
    def put(self, request: Request, run_id: str) -> Response:
        return _put(request, run_id, "summary")
