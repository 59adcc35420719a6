"""Importing a producer's archive (`<root>/runs/<run_id>/`) through the one write path.

Reading never writes to the archive: it may be mounted read-only. Progress is the byte offset of
each run's log already imported, so a second import reads only what was appended since.

An archive is read through an `ArchiveSource`: a folder (`FolderSource`, here) or a prefix of an S3
bucket (`ingest.s3_source.S3Source`). The import and the write path do not know which.
"""

from __future__ import annotations

import gc
import os
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import orjson
from django.db import connection
from django.db.models import Q
from django.utils import timezone

from kahn_site import metrics
from retention.selectors import runs_deleted_among
from runs import reduction
from runs.models import Run
from runs.services import LogItem, RunLog, run_import_failed, runs_import
from tenants.context import tenant_atomic
from tenants.models import Tenant

LOG, GRAPH, SUMMARY = "transitions.jsonl", "graph.json", "summary.json"

# How much to import per transaction: large enough that per-transaction costs vanish, small enough
# that an interrupted import loses little and a lock is never held for long.
CHUNK_BYTES = 8 * 1024 * 1024
CHUNK_RUNS = 500


class ImportProgress(Protocol):
    def start(self, total_bytes: int) -> None: ...

    def advance(self, bytes_read: int) -> None: ...


class ArchiveError(Exception):
    """The archive cannot be read at all (a fatal error, unlike a bad run or a bad line)."""


# What a run id may hold, in words, for the warning about a folder whose name is not one.
RUN_ID_RULE = "1 to 64 letters, digits, '_' or '-', beginning with a letter or a digit"
# An import error is shown and printed with its first line, at most this long.
MAX_IMPORT_ERROR = 500


def printable(text: str | os.PathLike[str]) -> str:
    """`text` with every character a terminal would act on or hide (controls, line and paragraph
    separators, format characters) written as its escape, so that a folder or run named by a
    producer cannot move the cursor, end a line or pose as another name. A byte of a file name
    that is not UTF-8 (kept by Python as a lone surrogate) is shown as that byte, `\\xNN`."""
    text = os.fspath(text)
    if text.isprintable():
        return text
    shown = []
    for char in text:
        code = ord(char)
        if char.isprintable():
            shown.append(char)
        elif 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's escape of an undecodable byte
            shown.append(f"\\x{code - 0xDC00:02x}")
        elif code <= 0xFF:
            shown.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            shown.append(f"\\u{code:04x}")
        else:
            shown.append(f"\\U{code:08x}")
    return "".join(shown)


class WarningsOnce:
    """Which warnings of a poll to print when following an archive: those the previous poll did
    not give. A problem that stays as it was (a folder with a bad name, a run waiting out its retry)
    is printed once, not at every poll; one that goes away and comes back is printed again."""

    def __init__(self) -> None:
        self._given: set[str] = set()

    def fresh(self, warnings: Iterable[str]) -> list[str]:
        given = list(dict.fromkeys(warnings))
        fresh = [warning for warning in given if warning not in self._given]
        self._given = set(given)
        return fresh


@dataclass(frozen=True, slots=True)
class RunFolder:
    """One run of the archive as its source's listing saw it."""

    run_id: str
    where: str  # the source's own name for the run's folder: a path, or an S3 key prefix
    log_size: int  # -1 while the producer has not created the log yet
    has_graph: bool
    has_summary: bool
    graph_size: int = -1  # known from the listing where the source lists sizes (S3)


class ArchiveSource(Protocol):
    """Where an archive is read from. Every method only reads: an archive may be read-only."""

    # How messages name the archive: its path, or s3://bucket/prefix.
    shown: str
    # How many runs' files may be read at once (reading an object store waits on the network).
    readers: int

    def scan(self) -> tuple[list[RunFolder], list[str]]:
        """The runs under `runs/`, and a warning for every entry that was skipped; an
        ArchiveError when the archive cannot be read at all."""
        ...

    def read_log(self, folder: RunFolder, offset: int) -> tuple[int, bytes | None]:
        """The log's size now and its bytes from `offset` on; None for the bytes when the log is
        shorter than `offset` (it shrank, or was rewritten)."""
        ...

    def file_size(self, folder: RunFolder, name: str) -> int:
        """The size of the run's file `name`; asked of graph.json, before it is read."""
        ...

    def read_json(self, folder: RunFolder, name: str) -> Any:
        """The run's small JSON file `name`, or a ValueError saying why not."""
        ...


@dataclass
class RunImport:
    """What one import did to one run, for the command's table."""

    run_id: str
    events: int = 0
    diagnostics: dict[str, int] = field(default_factory=lambda: {"error": 0, "warning": 0, "info": 0})
    run: Run | None = None


@dataclass
class ArchiveReport:
    runs: list[RunImport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    scanned: int = 0
    # Runs still in the archive that retention removed: never imported again (SPEC section 9).
    deleted: list[str] = field(default_factory=list)
    # Runs whose new lines the database refused: nothing of them was stored this time (see
    # `_import_chunks`); each is named in `warnings` too, with its error.
    failed: list[str] = field(default_factory=list)

    @property
    def events(self) -> int:
        return sum(r.events for r in self.runs)

    def add(self, part: ArchiveReport) -> None:
        """Adds what a part of the import (a chunk) did."""
        self.runs.extend(part.runs)
        self.warnings.extend(part.warnings)
        self.deleted.extend(part.deleted)
        self.failed.extend(part.failed)


_FILE_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a device"),
    (stat.S_ISBLK, "a device"),
)


def _run_file(folder: str, path: Path, warnings: list[str]) -> os.stat_result | None:
    """The stat of a run's file when it is a regular file; None, with a warning naming it, when it
    is a symlink (it may leave the archive), a folder, a FIFO (reading it would wait for a writer)
    or anything else; None, quietly, when it does not exist."""
    shown = f"runs/{folder}/{path.name}"
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        warnings.append(f"skipped {shown}: it cannot be read ({exc.strerror})")
        return None
    if stat.S_ISREG(info.st_mode):
        return info
    if stat.S_ISLNK(info.st_mode):
        warnings.append(f"skipped {shown}: symlinks are not followed")
        return None
    kind = next((name for test, name in _FILE_KINDS if test(info.st_mode)), "not a regular file")
    warnings.append(f"skipped {shown}: it is {kind}, not a regular file")
    return None


def _absolute(path: Path) -> Path:
    """The path made absolute without resolving symlinks, so that `..` names a real parent."""
    return Path(os.path.abspath(path))


def _check_root(root: Path) -> None:
    """Raises an ArchiveError saying what to give instead when `root` is not an archive root."""
    if (root / "runs").is_dir():
        return
    shown = printable(root)
    if not os.path.lexists(root):
        raise ArchiveError(f"{shown} does not exist")
    if not root.is_dir():
        raise ArchiveError(f"{shown} is not a folder: give the archive root, the folder that holds runs/")
    here = _absolute(root)
    if any(os.path.lexists(root / name) for name in (LOG, GRAPH, SUMMARY)):
        if here.parent.name == "runs":
            raise ArchiveError(
                f"{shown} is one run's folder, not an archive root: give the archive that holds it, "
                f"{printable(here.parent.parent)}"
            )
        raise ArchiveError(
            f"{shown} looks like one run's folder, not an archive root: an archive root holds "
            "runs/<run_id>/transitions.jsonl"
        )
    if here.name == "runs":
        raise ArchiveError(
            f"{shown} is the runs/ folder of an archive: give the archive root, its parent "
            f"{printable(here.parent)}"
        )
    raise ArchiveError(
        f"{shown} is not an archive: it has no runs/ folder (an archive root holds "
        "runs/<run_id>/transitions.jsonl)"
    )


class FolderSource:
    """An archive in a folder of this machine's file system."""

    readers = 1

    def __init__(self, root: Path) -> None:
        self.root = root
        self.shown = printable(root)

    def scan(self) -> tuple[list[RunFolder], list[str]]:
        return archive_scan(self.root)

    def read_log(self, folder: RunFolder, offset: int) -> tuple[int, bytes | None]:
        with _open_regular(Path(folder.where) / LOG) as file:
            size = os.fstat(file.fileno()).st_size
            if size < offset:
                return size, None
            file.seek(offset)
            return size, file.read(size - offset)

    def file_size(self, folder: RunFolder, name: str) -> int:
        return os.lstat(Path(folder.where) / name).st_size

    def read_json(self, folder: RunFolder, name: str) -> Any:
        return _read_json(Path(folder.where) / name)


def archive_source(root: ArchiveSource | Path | str) -> ArchiveSource:
    """The source of an archive named by a path or an `s3://bucket/prefix` URL (ArchiveError for
    an S3 URL that names no bucket)."""
    if isinstance(root, str) and root.startswith("s3://"):
        from ingest.s3_source import S3Source  # boto3 is loaded only for an archive in S3

        return S3Source.from_url(root)
    if isinstance(root, str | os.PathLike):
        return FolderSource(Path(root))
    return root


def archive_scan(root: Path) -> tuple[list[RunFolder], list[str]]:
    """The run folders under `root/runs`, and a warning for every entry that was skipped."""
    _check_root(root)
    runs_dir = root / "runs"
    folders, warnings = [], []
    try:
        entries = sorted(os.scandir(runs_dir), key=lambda e: e.name)
    except OSError as exc:
        raise ArchiveError(f"{printable(runs_dir)} cannot be read ({exc.strerror})") from None
    for entry in entries:
        name = printable(entry.name)
        if entry.is_symlink():
            warnings.append(f"skipped runs/{name}: symlinks are not followed")
            continue
        if not entry.is_dir(follow_symlinks=False):
            warnings.append(f"skipped runs/{name}: not a folder (each run is a folder runs/<run_id>/)")
            continue
        if not reduction.run_id_valid(entry.name):
            warnings.append(f"skipped runs/{name}: not a valid run id (a run id is {RUN_ID_RULE})")
            continue
        path = Path(entry.path)
        log = _run_file(entry.name, path / LOG, warnings)
        if log is None and not os.path.lexists(path / LOG):
            warnings.append(
                f"runs/{name} has no {LOG} yet: its events are imported once the producer writes it"
            )
        folders.append(
            RunFolder(
                run_id=entry.name,
                where=entry.path,
                log_size=log.st_size if log else -1,
                has_graph=_run_file(entry.name, path / GRAPH, warnings) is not None,
                has_summary=_run_file(entry.name, path / SUMMARY, warnings) is not None,
            )
        )
    return folders, warnings


def _chunks(folders: list[RunFolder], offsets: dict[str, int]) -> Iterator[list[RunFolder]]:
    chunk: list[RunFolder] = []
    size = 0
    for folder in folders:
        chunk.append(folder)
        size += max(folder.log_size - offsets.get(folder.run_id, 0), 0)
        if size >= CHUNK_BYTES or len(chunk) >= CHUNK_RUNS:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _open_regular(path: Path) -> BinaryIO:
    """The file opened for reading, only if it is still a regular file: the scan saw one, but a
    producer may have put a FIFO (whose open would wait for a writer) or a symlink in its place."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path.name} is no longer a regular file")
    return os.fdopen(fd, "rb")


def _read_json(path: Path) -> Any:
    """A small JSON file, or a ValueError saying why not (a partial write is retried next time)."""
    try:
        with _open_regular(path) as file:
            return orjson.loads(file.read())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"{path.name} is not readable JSON ({exc})") from exc


class _RunNamed:
    __slots__ = ("run_id",)

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id


class _NextSeq:
    __slots__ = ("next_seq",)

    def __init__(self, next_seq: int) -> None:
        self.next_seq = next_seq


class LogReading:
    """What `_valid_events` reports to while it reads one run's new lines: the run's id, the seq
    its next valid event gets, and the diagnostics it finds (handed on by `_log_items`)."""

    __slots__ = ("found", "reduction", "run")

    def __init__(self, run_id: str, next_seq: int) -> None:
        self.run = _RunNamed(run_id)
        self.reduction = _NextSeq(next_seq)
        self.found: list[reduction.Diagnostic] = []

    def diagnose(self, diagnostic: reduction.Diagnostic) -> None:
        self.found.append(diagnostic)


def _valid_events(
    change: LogReading, lines: list[bytes], first_line: int
) -> Iterator[tuple[dict[str, Any], str]]:
    """The events of complete log lines with their JSON text; a bad line becomes a diagnostic."""
    loads, validate, limit = orjson.loads, reduction.validate_event, reduction.MAX_EVENT_BYTES
    run_id = change.run.run_id
    for number, raw in enumerate(lines, start=first_line):
        if len(raw) > limit:
            problem = f"the line is {len(raw)} bytes; one event is at most {limit}"
        else:
            try:
                event = loads(raw)
            except orjson.JSONDecodeError as exc:
                problem = f"not JSON: {exc}"
            else:
                errors = validate(event)
                if not errors and not reduction.json_has_nul(raw, event):
                    if event["event"] == "run_start" and event["run_id"] != run_id:
                        change.diagnose(_run_id_mismatch(event["run_id"], run_id, number, change))
                    yield event, raw.decode()
                    continue
                problem = "; ".join(f"{e.field or 'event'}: {e.message}" for e in errors) or (
                    "the event contains a NUL character"
                )
        # An excerpt to show: a NUL byte (no JSON, so no event) cannot be stored in PostgreSQL text.
        text = raw[:200].decode("utf-8", "replace").replace("\x00", "\ufffd")
        change.diagnose(
            reduction.Diagnostic(
                "malformed_line",
                f"line {number} skipped: {problem}",
                line=number,
                details={"reason": problem, "text": text},
            )
        )


def _run_id_mismatch(named: str, run_id: str, line: int, change: LogReading) -> reduction.Diagnostic:
    """The folder's name and its log's `run_start` disagree: the folder's name is the run's id (it
    is what the archive is read by), and the event is stored as written."""
    return reduction.Diagnostic(
        "run_id_mismatch",
        f"run_start names run '{printable(named)}', but its folder is runs/{run_id}/: "
        f"the run is stored as {run_id!r}",
        seq=change.reduction.next_seq,
        line=line,
        details={"run_id": named, "folder": run_id},
    )


def _log_items(reading: LogReading, lines: list[bytes], first_line: int) -> Iterator[LogItem]:
    """The log's valid events, each with its JSON text, and the diagnostics of its other lines,
    where they stand; parsed as they are consumed (the write path streams them as it goes)."""
    found, seqs = reading.found, reading.reduction
    for item in _valid_events(reading, lines, first_line):
        if found:
            yield from found
            found.clear()
        yield item
        seqs.next_seq += 1
    yield from found
    found.clear()


def _run_log(
    source: ArchiveSource, folder: RunFolder, stored: _Stored | None, warnings: list[str]
) -> tuple[RunLog, int]:
    """What the folder holds beyond what the run already has (`stored`, as read before the import),
    read now; and the log's bytes read. Its lines are parsed when the write path consumes them."""
    stored = stored or _NEW_RUN
    log = RunLog(run_id=folder.run_id, new=stored is _NEW_RUN, log_offset=stored.offset)
    if folder.has_graph and not stored.has_graph:
        try:
            size = source.file_size(folder, GRAPH)
            if size > reduction.MAX_GRAPH_BYTES:
                raise ValueError(
                    f"graph.json is {size} bytes, over the {reduction.MAX_GRAPH_BYTES} a graph may be"
                )
            graph = source.read_json(folder, GRAPH)
            problems = reduction.validate_graph(graph)
            if problems:
                raise ValueError(f"graph.json breaks the schema: {problems[0].field}: {problems[0].message}")
            log.graph = graph
        except ValueError as exc:
            warnings.append(f"{folder.run_id}: {printable(str(exc))}; not imported, tried again next time")

    read = 0
    if folder.log_size >= 0 and not stored.shrank:
        size, data = source.read_log(folder, stored.offset)
        log.log_size = size
        # A log shorter than what was imported is the write path's to note (and stop reading).
        if data is not None:
            # A line is complete only once it ends in "\n"; an unfinished last line is a write in
            # progress and waits for the next import.
            end = data.rfind(b"\n") + 1
            lines = data[: end - 1].split(b"\n") if end else []
            reading = LogReading(folder.run_id, stored.next_seq)
            log.items = _log_items(reading, lines, first_line=stored.lines + 1)
            log.log_end = stored.offset + end
            log.lines = len(lines)
            read = end

    if folder.has_summary and not stored.has_summary:
        try:
            summary = source.read_json(folder, SUMMARY)
            if not isinstance(summary, dict):
                raise ValueError("summary.json is not a JSON object")
            if reduction.json_too_deep(summary):
                raise ValueError(f"summary.json nests more than {reduction.MAX_JSON_DEPTH} levels")
            log.summary = summary
        except ValueError as exc:
            warnings.append(f"{folder.run_id}: {printable(str(exc))}; not imported, tried again next time")
    return log, read


@dataclass(frozen=True, slots=True)
class _Stored:
    """What the database holds of a run, as the import decides what to read."""

    offset: int
    size_seen: int
    lines: int
    next_seq: int
    has_graph: bool
    has_summary: bool
    shrank: bool
    import_error: str
    retry_at: datetime | None


# A run with no row yet.
_NEW_RUN = _Stored(0, 0, 0, 0, False, False, False, "", None)


def archive_import(
    *,
    tenant: Tenant,
    root: ArchiveSource | Path | str,
    progress: ImportProgress | None = None,
    retry_now: bool = False,
) -> ArchiveReport:
    """Imports everything new under `root` for `tenant`: new runs, appended lines, late files.
    `root` is a source, or a folder's path or an `s3://bucket/prefix` URL (see `archive_source`).

    A run whose last import failed is tried again once its retry time has come (a follower polls
    every second and must not fail the same way at each poll), or at once with `retry_now` (a
    person running the import by hand).
    """
    source = archive_source(root)
    folders, warnings = source.scan()
    report = ArchiveReport(warnings=warnings, scanned=len(folders))
    now = timezone.now()
    stored, deleted = _stored_runs(tenant, [f.run_id for f in folders])
    report.deleted = [f.run_id for f in folders if f.run_id in deleted]
    todo = []
    for folder in folders:
        known = stored.get(folder.run_id)
        if folder.run_id in deleted or not _needs_import(folder, known):
            continue
        waiting = known is not None and known.import_error and known.retry_at and known.retry_at > now
        if waiting and known is not None and not retry_now:
            # Still waiting out its retry: the warning it gave stands, word for word (see WarningsOnce).
            report.failed.append(folder.run_id)
            report.warnings.append(_failure_warning(folder.run_id, known.import_error))
            continue
        todo.append(folder)
    offsets = {run_id: known.offset for run_id, known in stored.items()}
    if progress is not None:
        progress.start(sum(max(f.log_size - offsets.get(f.run_id, 0), 0) for f in todo))
    started = time.perf_counter()
    with _collector_paused():
        _import_chunks(source, tenant, todo, stored, report, progress)
    if todo:
        metrics.IMPORT_SECONDS.inc(time.perf_counter() - started)
        metrics.IMPORTED_EVENTS.inc(report.events)
        metrics.IMPORTED_RUNS.inc(len(report.runs))
    return report


def _stored_runs(tenant: Tenant, run_ids: list[str]) -> tuple[dict[str, _Stored], set[str]]:
    """What the database holds of these runs, and which of them retention removed: soft-deleted
    ones, and those with no row whose retention record says they were hard-deleted."""
    stored: dict[str, _Stored] = {}
    deleted: set[str] = set()
    wanted = set(run_ids)
    with tenant_atomic(tenant):
        for run_id, deleted_at, *values in (
            Run.objects.including_deleted()
            .filter(tenant=tenant)
            .annotate(has_graph=Q(graph__isnull=False), has_summary=Q(summary__isnull=False))
            .values_list(
                "run_id",
                "deleted_at",
                "log_offset",
                "log_size_seen",
                "log_lines",
                "next_seq",
                "has_graph",
                "has_summary",
                "log_shrank",
                "import_error",
                "import_retry_at",
            )
        ):
            if run_id not in wanted:
                continue
            stored[run_id] = _Stored(*values)
            if deleted_at is not None:
                deleted.add(run_id)
        # A run with no row was never imported, or was hard-deleted: its retention record says which.
        new = [run_id for run_id in run_ids if run_id not in stored]
        deleted.update(runs_deleted_among(tenant=tenant, run_ids=new) if new else ())
    return stored, deleted


def _needs_import(folder: RunFolder, stored: _Stored | None) -> bool:
    """Whether the folder holds anything not yet imported, judged from sizes alone (no reads)."""
    if stored is None:
        return folder.log_size >= 0 or folder.has_graph
    if folder.log_size >= 0 and folder.log_size != stored.size_seen and not stored.shrank:
        return True
    return (folder.has_graph and not stored.has_graph) or (folder.has_summary and not stored.has_summary)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pauses Python's cyclic garbage collector for a bulk import.

    It makes a pass every 700 new containers and, every so often, a full pass over every object
    Django keeps alive: on an import that costs more than the parsing itself. Events parsed from
    JSON form no cycles, so reference counting frees them all the same.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _import_chunks(
    source: ArchiveSource,
    tenant: Tenant,
    todo: list[RunFolder],
    stored: dict[str, _Stored],
    report: ArchiveReport,
    progress: ImportProgress | None,
) -> None:
    """Imports the runs a chunk at a time, each chunk in one transaction, and adds what each did to
    `report` in the archive's order.

    On PostgreSQL, IMPORTS_IN_FLIGHT chunks go at once, each on its own connection: while one
    chunk's rows are written, indexed and committed by the server, the next is read and parsed
    here. A chunk's writes are mostly waiting on the server (Python lets go of its lock meanwhile),
    its parsing mostly Python: one after the other, each would leave a core idle (README,
    Benchmarks). Chunks hold disjoint runs, so they never wait for each other's locks. SQLite
    allows one writer at a time, and a caller's transaction holds everything done inside it on
    its own connection: there, and for a single chunk, chunks go one after the other.
    """
    offsets = {run_id: known.offset for run_id, known in stored.items()}
    chunks = list(_chunks(todo, offsets))
    if connection.vendor != "postgresql" or connection.in_atomic_block or len(chunks) < 2:
        for chunk in chunks:
            report.add(_import_chunk(source, tenant, chunk, stored, progress))
        return
    shared = _SharedProgress(progress) if progress is not None else None
    pool = ThreadPoolExecutor(max_workers=IMPORTS_IN_FLIGHT, thread_name_prefix="import")
    try:
        imports = [
            pool.submit(_import_chunk_in_thread, source, tenant, chunk, stored, shared) for chunk in chunks
        ]
        for chunk_imported in imports:
            report.add(chunk_imported.result())
    finally:
        # After a failure that ends the import (see `_import_chunk`), chunks not yet begun never are.
        pool.shutdown(wait=True, cancel_futures=True)


# Chunks imported at once on PostgreSQL: one parsed while another is written; more would only
# queue for Python's lock.
IMPORTS_IN_FLIGHT = 2


def _import_chunk_in_thread(
    source: ArchiveSource,
    tenant: Tenant,
    chunk: list[RunFolder],
    stored: dict[str, _Stored],
    progress: ImportProgress | None,
) -> ArchiveReport:
    """`_import_chunk` in a pool's thread, on that thread's connection, closed when done."""
    try:
        return _import_chunk(source, tenant, chunk, stored, progress)
    finally:
        connection.close()


class _SharedProgress:
    """A progress report several threads advance."""

    def __init__(self, progress: ImportProgress) -> None:
        self.progress = progress
        self.lock = threading.Lock()

    def start(self, total_bytes: int) -> None:
        self.progress.start(total_bytes)

    def advance(self, bytes_read: int) -> None:
        with self.lock:
            self.progress.advance(bytes_read)


def _import_chunk(
    source: ArchiveSource,
    tenant: Tenant,
    chunk: list[RunFolder],
    stored: dict[str, _Stored],
    progress: ImportProgress | None,
) -> ArchiveReport:
    """Imports one chunk's runs in one transaction and says what it did; a chunk the database
    refuses is imported again a run at a time, so that only the run it refused is lost.

    Whatever the validation lets through should be storable; when it is not (a value past a
    column's range, a trigger or a constraint an operator added), the refusal comes from the
    database, in the middle of a COPY that carries every run of the chunk. Retrying alone costs
    nothing while nothing fails, and one transaction per run of that chunk when something does.
    A run that fails alone is recorded as failed (`run_import_failed`), with the error its page
    shows. Recording it is the test of the database itself: if that fails too, the database is
    gone, and the import ends with that error.
    """
    part = ArchiveReport()
    try:
        _import_together(source, tenant, chunk, stored, part, progress)
        return part
    except Exception as exc:  # any refusal, whatever raised it (see above)
        if len(chunk) == 1:
            _import_failed(tenant, chunk[0].run_id, exc, part)
            return part
    for folder in chunk:
        try:
            _import_together(source, tenant, [folder], stored, part, progress)
        except Exception as exc:
            _import_failed(tenant, folder.run_id, exc, part)
    return part


# How many times a run another import keeps advancing is read again before it is left to the next.
STALE_READS = 3


def _import_together(
    source: ArchiveSource,
    tenant: Tenant,
    chunk: list[RunFolder],
    stored: dict[str, _Stored],
    report: ArchiveReport,
    progress: ImportProgress | None,
) -> None:
    """Imports these runs in one transaction; the report learns of them once it has committed. A
    run another import advanced since it was read is read again from where that one left it."""
    for _ in range(STALE_READS):
        warned: dict[str, list[str]] = {folder.run_id: [] for folder in chunk}
        run_log = partial(_run_log_of, source, stored, warned)
        if source.readers > 1 and len(chunk) > 1:
            # An object store answers each read after a round trip: several at once hide them.
            with ThreadPoolExecutor(max_workers=source.readers, thread_name_prefix="read") as readers:
                read_logs = list(readers.map(run_log, chunk))
        else:
            read_logs = [run_log(folder) for folder in chunk]
        logs = [log for log, _ in read_logs]
        read = {log.run_id: n for log, n in read_logs}
        imported = runs_import(tenant=tenant, runs=logs)
        report.deleted.extend(imported.deleted)
        stale = set(imported.stale)
        report.warnings.extend(w for run_id, found in warned.items() if run_id not in stale for w in found)
        if progress is not None:
            progress.advance(sum(n for run_id, n in read.items() if run_id not in stale))
        for change in imported.changes:
            if change.news:
                run_import = RunImport(change.run.run_id, events=change.appended, run=change.run)
                for diagnostic in change.diagnostics:
                    run_import.diagnostics[diagnostic.severity] += 1
                report.runs.append(run_import)
        if not stale:
            return
        chunk = [folder for folder in chunk if folder.run_id in stale]
        fresh, deleted = _stored_runs(tenant, [folder.run_id for folder in chunk])
        stored.update(fresh)
        report.deleted.extend(run_id for run_id in deleted if run_id not in report.deleted)
        chunk = [folder for folder in chunk if folder.run_id not in deleted]
    report.warnings.extend(
        f"runs/{folder.run_id}: another import kept writing it; tried again next time" for folder in chunk
    )


def _run_log_of(
    source: ArchiveSource, stored: dict[str, _Stored], warned: dict[str, list[str]], folder: RunFolder
) -> tuple[RunLog, int]:
    return _run_log(source, folder, stored.get(folder.run_id), warned[folder.run_id])


def _import_failed(tenant: Tenant, run_id: str, exc: Exception, report: ArchiveReport) -> None:
    lines = str(exc).strip().splitlines()
    error = printable(f"{type(exc).__name__}: {lines[0] if lines else 'no message'}")[:MAX_IMPORT_ERROR]
    run_import_failed(tenant=tenant, run_id=run_id, error=error, now=timezone.now())
    report.failed.append(run_id)
    report.warnings.append(_failure_warning(run_id, error))


def _failure_warning(run_id: str, error: str) -> str:
    return (
        f"could not import runs/{run_id}: {error}. Nothing new of this run was stored; its page shows "
        "the error, and the import tries it again later"
    )
