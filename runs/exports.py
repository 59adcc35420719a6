"""Data taken out of Scope: run history as CSV or NDJSON, and one run as an archive folder.

Both stream. History is read in keyset batches of `EXPORT_BATCH` runs, each its own short unit of
work for the tenant (`tenant_atomic`): the response outlives the request's transaction, and no batch
holds a transaction open while the client reads. A run's archive is a `tar.gz` written member by
member as its events are read: tar needs each member's size in its header, so a first query sums the
log's bytes (as the database will print them) and a second reads them in `seq` batches, up to the
`seq` the first one saw, so that an event appended meanwhile cannot make the member longer than its
header says.
"""

from __future__ import annotations

import csv
import io
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from django.db import connection
from django.db.models import QuerySet, Sum, TextField
from django.db.models.functions import Cast, Length

from runs.models import Event, Run
from runs.read_model import RUN_ROW_SHOWN, RunRow, run_row_data
from runs.selectors import RunPosition, run_list_page, run_rows
from tenants.context import tenant_atomic
from tenants.models import Tenant

EXPORT_BATCH = 1000
ARCHIVE_EVENT_BATCH = 2000
LOG, GRAPH, SUMMARY = "transitions.jsonl", "graph.json", "summary.json"


def run_row_batches(runs: QuerySet[Run], *, tenant: Tenant, now: datetime) -> Iterator[list[RunRow]]:
    """The rows of `runs` (a `runs.selectors.run_list`), newest first, `EXPORT_BATCH` at a time, as
    the history pages them: the keyset of `run_list_page`, every status at the one moment `now`."""
    batch = EXPORT_BATCH
    position: RunPosition | None = None
    while True:
        with tenant_atomic(tenant):
            page = run_list_page(runs, position=position, backwards=False, limit=batch)
            rows = run_rows(page, tenant=tenant, now=now)
        yield rows
        if len(page) < batch:
            return
        position = RunPosition(started=page[-1].started, id=page[-1].pk)


def _csv_cell(value: Any) -> Any:
    # Lists and maps (failed nodes, attempts by node, diagnostic counts) as their JSON, one cell each.
    if isinstance(value, list | dict):
        return orjson.dumps(value).decode()
    return "" if value is None else value


def rows_csv(batches: Iterable[list[RunRow]]) -> Iterator[str]:
    """A header of the API's row fields, then a line per run; one string per batch."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(RUN_ROW_SHOWN)
    for rows in batches:
        for row in rows:
            writer.writerow([_csv_cell(value) for value in run_row_data(row).values()])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():  # no batch at all: the header alone
        yield buffer.getvalue()


def rows_ndjson(batches: Iterable[list[RunRow]]) -> Iterator[bytes]:
    """Each row as `GET runs/` shows it, one JSON object a line; one chunk per batch."""
    for rows in batches:
        if rows:
            yield b"".join(orjson.dumps(run_row_data(row)) + b"\n" for row in rows)


# ---------------------------------------------------------------- one run's archive folder


@dataclass(frozen=True, slots=True)
class ArchiveMember:
    name: str
    size: int
    chunks: Iterable[bytes]


class ArchiveChanged(RuntimeError):
    """The run's log changed under the export (retention removed it): the stream is cut short, so
    the client sees a broken archive rather than a wrong one."""


def _payload_texts(events: QuerySet[Event]) -> QuerySet[Any]:
    # The payload as the database prints it: on SQLite the text stored, on PostgreSQL jsonb's own.
    return events.annotate(text=Cast("payload", TextField()))


def _text_bytes(events: QuerySet[Event]) -> int:
    # Bytes, not characters: PostgreSQL's octet_length; SQLite's length() counts bytes of a blob.
    length = _OctetLength if connection.vendor == "postgresql" else _BlobLength
    size = events.aggregate(n=Sum(length(Cast("payload", TextField()))))["n"]
    return int(size or 0)


class _OctetLength(Length):
    function = "OCTET_LENGTH"


class _BlobLength(Length):
    template = "LENGTH(CAST(%(expressions)s AS BLOB))"


def run_archive_members(run: Run, *, tenant: Tenant) -> list[ArchiveMember]:
    """The folder `ingest_archive` reads a run from: its log (each stored event's payload, in `seq`
    order, a line each), `graph.json` if it has a graph and the producer's `summary.json` if any."""
    with tenant_atomic(tenant):
        events = Event.objects.filter(tenant=tenant, run=run)
        last_seq = events.order_by("-seq").values_list("seq", flat=True).first()
        bounded = events.filter(seq__lte=last_seq if last_seq is not None else -1)
        count = bounded.count()
        log_size = _text_bytes(bounded) + count  # a newline after each
    members = [ArchiveMember(LOG, log_size, _log_chunks(run, tenant=tenant, last_seq=last_seq))]
    if run.graph is not None:
        members.append(_json_member(GRAPH, run.graph))
    if run.summary is not None:
        members.append(_json_member(SUMMARY, run.summary))
    return members


def _json_member(name: str, value: Any) -> ArchiveMember:
    data = orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n"
    return ArchiveMember(name, len(data), (data,))


def _log_chunks(run: Run, *, tenant: Tenant, last_seq: int | None) -> Iterator[bytes]:
    if last_seq is None:
        return
    after = -1
    while after < last_seq:
        with tenant_atomic(tenant):
            events = Event.objects.filter(tenant=tenant, run=run, seq__gt=after, seq__lte=last_seq)
            batch = list(
                _payload_texts(events).order_by("seq").values_list("seq", "text")[:ARCHIVE_EVENT_BATCH]
            )
        if not batch:
            raise ArchiveChanged(f"run {run.run_id!r} lost events while it was exported")
        yield "".join(f"{text}\n" for _seq, text in batch).encode()
        after = batch[-1][0]


def tar_gz(folder: str, members: Iterable[ArchiveMember], *, mtime: float) -> Iterator[bytes]:
    """A gzipped POSIX tar of `folder/` and its members, written as the members' chunks arrive."""
    gzip = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    for block in _tar(folder, members, mtime=mtime):
        compressed = gzip.compress(block)
        if compressed:  # zlib keeps small inputs until it has enough to send
            yield compressed
    yield gzip.flush()


def _tar(folder: str, members: Iterable[ArchiveMember], *, mtime: float) -> Iterator[bytes]:
    """Python's `tarfile` copies a member's whole content in one call; writing the headers with its
    `TarInfo` and the content here lets each chunk leave as soon as it is read."""

    def header(name: str, size: int, *, directory: bool = False) -> bytes:
        info = tarfile.TarInfo(name)
        info.size, info.mtime = size, int(mtime)
        info.type, info.mode = (tarfile.DIRTYPE, 0o755) if directory else (tarfile.REGTYPE, 0o644)
        return info.tobuf(tarfile.PAX_FORMAT)

    yield header(f"{folder}/", 0, directory=True)
    for member in members:
        yield header(f"{folder}/{member.name}", member.size)
        written = 0
        for chunk in member.chunks:
            written += len(chunk)
            if written > member.size:
                raise ArchiveChanged(f"{member.name} grew while it was exported")
            yield chunk
        if written != member.size:
            raise ArchiveChanged(f"{member.name} shrank while it was exported")
        yield b"\0" * (-member.size % tarfile.BLOCKSIZE)
    # The end of the archive: two empty blocks.
    yield b"\0" * (2 * tarfile.BLOCKSIZE)
