"""Producers' batches over HTTP (SPEC section 5), through the same write path as the archive.

A batch is all or nothing: every check runs before the first event is written, inside the
transaction that locks the run, so a rejected batch leaves the database exactly as it was and
concurrent batches of one run are serialised while batches of other runs proceed.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import orjson
from rest_framework import status

from kahn_site.api_errors import ApiError, RunDeleted
from retention.errors import run_deleted_error
from runs import reduction
from runs.models import Event
from runs.services import RunBatch, RunChange, RunDeletedError, run_batch_write
from tenants.models import Tenant

MAX_REQUEST_BYTES = 1024 * 1024
MAX_BATCH_EVENTS = 1000
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")
JSON_TYPES = ("application/json",)


# ---------------------------------------------------------------- errors of the contract


class InvalidBody(ApiError):
    code = "invalid_body"

    def __init__(self, message: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(message, details={"errors": errors})


class EventTooLarge(ApiError):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    code = "event_too_large"


class BatchTooLarge(ApiError):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    code = "batch_too_large"


class UnsupportedMediaType(ApiError):
    status_code = status.HTTP_415_UNSUPPORTED_MEDIA_TYPE
    code = "unsupported_media_type"


class Conflict(ApiError):
    status_code = status.HTTP_409_CONFLICT


class SeqConflict(Conflict):
    code = "seq_conflict"


class SeqGap(Conflict):
    code = "seq_gap"


class RunNotStarted(Conflict):
    code = "run_not_started"


class RunEnded(Conflict):
    code = "run_ended"


class AlreadyWritten(Conflict):
    code = "already_written"


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


@dataclass(frozen=True)
class Receipt:
    """What is stored after a batch: the producer's next batch starts at `next_seq`."""

    run_id: str
    accepted: int
    duplicates: int
    next_seq: int


def _already_stored(change: RunChange, batch: EventBatch, next_seq: int) -> int:
    """How many leading events of a batch are retries of stored ones; a different one is a conflict."""
    assert batch.seqs is not None
    first = batch.seqs[0]
    if first > next_seq:
        raise SeqGap(
            f"the batch starts at seq {first} but the run's next seq is {next_seq}",
            details={"next_seq": next_seq, "first_seq": first},
        )
    overlap = min(next_seq - first, len(batch.events))
    if overlap <= 0:
        return 0
    stored = dict(
        Event.objects.filter(run_id=change.run.pk, seq__gte=first, seq__lt=first + overlap).values_list(
            "seq", "payload"
        )
    )
    for offset in range(overlap):
        seq = first + offset
        if stored.get(seq) != batch.events[offset]:
            raise SeqConflict(
                f"seq {seq} is already stored with other content",
                details={"seq": seq, "index": offset, "next_seq": next_seq},
            )
    return overlap


def _open_run(run_batch: RunBatch, tenant: Tenant, run_id: str) -> RunChange:
    """The run to write to, locked; `410 run_deleted` for a run retention removed.

    Nothing reaches a deleted run (SPEC section 9): a write would bring it back half-visible, or,
    once hard-deleted, start a new run under an id whose history says it is gone. A soft-deleted
    run is restored in the admin first. The hard-deleted check runs after the lock, so a hard
    delete that committed while this request waited for it is seen.
    """
    try:
        change = run_batch.open([run_id])[run_id]
    except RunDeletedError:
        raise run_deleted_error(tenant=tenant, run_id=run_id) or RunDeleted(
            f"run {run_id!r} was deleted by retention", details={"run_id": run_id}
        ) from None
    if change.created:
        deleted = run_deleted_error(tenant=tenant, run_id=run_id)
        if deleted is not None:
            raise deleted
    return change


def _run_id_mismatches(batch: EventBatch, run_id: str) -> list[dict[str, Any]]:
    """A `run_start` naming another run than the URL's: the log and its address would disagree."""
    return [
        _problem(index, "run_id", f"run_start names run {event['run_id']!r}, but the URL is run {run_id!r}'s")
        for index, event in enumerate(batch.events)
        if event.get("event") == "run_start" and event.get("run_id") != run_id
    ]


def run_append_batch(*, tenant: Tenant, run_id: str, batch: EventBatch) -> Receipt:
    """Appends a batch to a run (created by its first batch), all of it or none of it."""
    mismatches = _run_id_mismatches(batch, run_id)
    if mismatches:
        raise InvalidBody(f"the batch's run_start names another run than {run_id!r}", mismatches)

    def append(run_batch: RunBatch) -> Receipt:
        change = _open_run(run_batch, tenant, run_id)
        next_seq = change.reduction.next_seq
        duplicates = _already_stored(change, batch, next_seq) if batch.seqs else 0
        new_events = batch.events[duplicates:]
        if new_events:
            if next_seq == 0 and new_events[0]["event"] != "run_start":
                raise RunNotStarted(
                    f"the first event of a run must be run_start, not {new_events[0]['event']!r}",
                    details={"index": duplicates},
                )
            ended = change.reduction.complete
            for index, event in enumerate(new_events, start=duplicates):
                if ended:
                    raise RunEnded(
                        "the run has ended: nothing is accepted after run_end",
                        details={"index": index, "next_seq": next_seq},
                    )
                ended = event["event"] == "run_end"
            change.extend(zip(new_events, batch.payloads[duplicates:], strict=True))
        return Receipt(
            run_id=run_id,
            accepted=len(new_events),
            duplicates=duplicates,
            next_seq=change.reduction.next_seq,
        )

    receipt, _ = run_batch_write(tenant=tenant, write=append)
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

    def put(run_batch: RunBatch) -> bool:
        change = _open_run(run_batch, tenant, run_id)
        stored = getattr(change.run, kind)
        if stored is not None:
            if stored != document:
                raise AlreadyWritten(
                    f"the run's {kind} is written once, and differs from this one", details={"kind": kind}
                )
            return False
        if kind == "graph":
            change.set_graph(document)
        else:
            change.set_summary(document)
        return True

    written, _ = run_batch_write(tenant=tenant, write=put)
    return written
