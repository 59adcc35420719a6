"""Producers' batches over HTTP (SPEC section 5): a body parsed and checked here, then written by
the same write path as the archive (`runs.services`).

A batch is all or nothing: the body's checks run before anything is written, the run's own checks
(seqs, run_start first, nothing after run_end) inside the transaction that locks the run, so a
rejected batch leaves the database exactly as it was and concurrent batches of one run are
serialised while batches of other runs proceed. Refusals are plain exceptions (`BatchRefused` here,
`runs.errors` there); the API edge gives them their HTTP status (ingest.api).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson

from retention.selectors import run_deletion
from runs import reduction
from runs.errors import Refused, RunDeletedError
from runs.services import Receipt, run_append_events, run_document_set
from tenants.context import directly_in_request_transaction, tenant_atomic
from tenants.models import Tenant

__all__ = ["EventBatch", "Receipt", "events_parse", "run_append_batch", "run_put_document"]

MAX_REQUEST_BYTES = 1024 * 1024
MAX_BATCH_EVENTS = 1000
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")
JSON_TYPES = ("application/json",)


# ---------------------------------------------------------------- what a body is refused for


class BatchRefused(Refused):
    """A body the contract refuses, before anything is written. The API edge gives each its HTTP
    status (ingest.api)."""

    code = "invalid_body"


class InvalidBody(BatchRefused):
    code = "invalid_body"

    def __init__(self, message: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(message, details={"errors": errors})


class EventTooLarge(BatchRefused):
    code = "event_too_large"


class BatchTooLarge(BatchRefused):
    code = "batch_too_large"


class UnsupportedMediaType(BatchRefused):
    code = "unsupported_media_type"


# ---------------------------------------------------------------- parsing


@dataclass(frozen=True)
class EventBatch:
    """A parsed, valid batch: the events (without `seq`), their JSON text, and their `seq`s if sent."""

    events: list[dict[str, Any]]
    payloads: list[str]
    seqs: list[int] | None


def _problem(index: int | None, field: str, message: str) -> dict[str, Any]:
    return {"index": index, "field": field, "message": message}


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _loads(raw: bytes, index: int | None) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        where = "the body" if index is None else f"event {index}"
        reason = "is not valid UTF-8" if "utf-8" in str(exc).lower() else f"is not JSON ({exc})"
        raise InvalidBody(f"{where} {reason}", [_problem(index, "", reason)]) from None


def _dumped(item: Any, index: int) -> bytes:
    """One event of a JSON array as text, to measure and store. orjson writes at most 254 levels:
    an event nested deeper breaks the schema's bound (`reduction.MAX_JSON_DEPTH`) anyway."""
    try:
        return orjson.dumps(item)
    except orjson.JSONEncodeError:
        message = f"must not nest more than {reduction.MAX_JSON_DEPTH} levels of objects and lists"
        raise InvalidBody(f"event {index} is nested too deeply", [_problem(index, "", message)]) from None


def events_parse(body: bytes, content_type: str) -> EventBatch:
    """The events of a request body (NDJSON or a JSON array), or the contract's error for it."""
    media_type = _media_type(content_type)
    if media_type not in NDJSON_TYPES + JSON_TYPES:
        raise UnsupportedMediaType(
            f"send events as application/x-ndjson or application/json, not {media_type or 'no content type'}"
        )
    if len(body) > MAX_REQUEST_BYTES:
        raise BatchTooLarge(
            f"the request is {len(body)} bytes; a batch is at most {MAX_REQUEST_BYTES}",
            details={"max_bytes": MAX_REQUEST_BYTES},
        )
    if media_type in NDJSON_TYPES:
        lines = body.split(b"\n")
        if lines and not lines[-1].strip():
            lines.pop()  # the newline that ends the last line
        raws: list[bytes] = lines
        items = [_loads(raw, index) for index, raw in enumerate(lines)]
    else:
        items = _loads(body, None)
        if not isinstance(items, list):
            raise InvalidBody(
                "an application/json body is an array of events", [_problem(None, "", "not an array")]
            )
        raws = [_dumped(item, index) for index, item in enumerate(items)]
    if not items:
        raise InvalidBody("the batch holds no events", [_problem(None, "", "no events")])
    if len(items) > MAX_BATCH_EVENTS:
        raise BatchTooLarge(
            f"the batch holds {len(items)} events; a batch is at most {MAX_BATCH_EVENTS}",
            details={"max_events": MAX_BATCH_EVENTS},
        )
    # One pass, written for speed (a batch is up to a thousand events): the first event over the
    # size limit refuses the batch; every other problem is listed.
    problems: list[dict[str, Any]] = []
    events, seqs = [], []
    validate, has_nul, max_bytes = reduction.validate_event, reduction.json_has_nul, reduction.MAX_EVENT_BYTES
    for index, (item, raw) in enumerate(zip(items, raws, strict=True)):
        if len(raw) > max_bytes:
            raise EventTooLarge(
                f"event {index} is {len(raw)} bytes; one event is at most {max_bytes}",
                details={"index": index, "max_bytes": max_bytes},
            )
        is_object = type(item) is dict
        if is_object and "seq" in item:
            item = dict(item)
            seq = item.pop("seq")
            problem = reduction.seq_problem(seq)
            if problem is not None:
                problems.append(_problem(index, "seq", problem))
            seqs.append(seq)
        found = validate(item)
        if found:
            problems.extend([_problem(index, e.field, e.message) for e in found])
        if is_object and has_nul(raw, item):
            problems.append(_problem(index, "", "must not contain NUL characters"))
        events.append(item)
    if seqs and len(seqs) != len(items):
        problems.append(_problem(None, "seq", "give seq on every event of a batch, or on none"))
    elif seqs and not problems and any(b != a + 1 for a, b in itertools.pairwise(seqs)):
        problems.append(_problem(None, "seq", "the seqs of a batch must be consecutive and increasing"))
    if problems:
        raise InvalidBody(f"{len(problems)} problem(s) in the batch", problems)
    # Stored without their seq; with none, the producer's own text, already parsed and checked.
    payloads = [orjson.dumps(e).decode() for e in events] if seqs else [raw.decode() for raw in raws]
    return EventBatch(events=events, payloads=payloads, seqs=seqs or None)


# ---------------------------------------------------------------- writing


@contextmanager
def _one_unit_of_work(tenant: Tenant) -> Iterator[None]:
    """The write and its checks in one transaction: directly in a request's own (rolled back whole
    with an error answer), else in one of their own."""
    if directly_in_request_transaction():
        yield
        return
    with tenant_atomic(tenant):
        yield


def _refuse_if_removed(tenant: Tenant, run_id: str) -> None:
    """Nothing reaches a run retention removed (SPEC section 9): a write that finds no row and
    creates one must not start a new run under an id whose history says it is gone. Checked after
    the run's row is locked, in the same transaction, so a hard delete that committed while the
    write waited for it is seen, and the new row rolls back."""
    if run_deletion(tenant=tenant, run_id=run_id) is not None:
        raise RunDeletedError(run_id)


def _run_id_mismatches(batch: EventBatch, run_id: str) -> list[dict[str, Any]]:
    """A `run_start` naming another run than the URL's: the log and its address would disagree."""
    return [
        _problem(index, "run_id", f"run_start names run {event['run_id']!r}, but the URL is run {run_id!r}'s")
        for index, event in enumerate(batch.events)
        if event.get("event") == "run_start" and event.get("run_id") != run_id
    ]


def run_append_batch(*, tenant: Tenant, run_id: str, batch: EventBatch) -> Receipt:
    """Appends a parsed batch to a run (created by its first batch), all of it or none of it.

    A soft-deleted run is refused (`runs.errors.RunDeletedError`), as is one removed for good; a
    soft-deleted run is restored in the admin first.
    """
    mismatches = _run_id_mismatches(batch, run_id)
    if mismatches:
        raise InvalidBody(f"the batch's run_start names another run than {run_id!r}", mismatches)
    with _one_unit_of_work(tenant):
        receipt = run_append_events(
            tenant=tenant,
            run_id=run_id,
            events=batch.events,
            payloads=batch.payloads,
            first_seq=batch.seqs[0] if batch.seqs else None,
        )
        if receipt.created:
            _refuse_if_removed(tenant, run_id)
    return receipt


def run_put_document(*, tenant: Tenant, run_id: str, kind: str, document: dict[str, Any]) -> bool:
    """Writes a run's graph or summary once; the same body again is fine. True if newly written."""
    if kind == "graph":
        problems = reduction.validate_graph(document)
        if problems:
            raise InvalidBody("the graph is invalid", [_problem(None, p.field, p.message) for p in problems])
    elif reduction.json_too_deep(document):
        message = f"must not nest more than {reduction.MAX_JSON_DEPTH} levels of objects and lists"
        raise InvalidBody(f"the {kind} is nested too deeply", [_problem(None, "", message)])
    if reduction.json_has_nul(orjson.dumps(document), document):
        raise InvalidBody(
            f"the {kind} must not contain NUL characters", [_problem(None, "", "NUL character")]
        )
    with _one_unit_of_work(tenant):
        result = run_document_set(tenant=tenant, run_id=run_id, kind=kind, document=document)
        if result.created:
            _refuse_if_removed(tenant, run_id)
    return result.written
