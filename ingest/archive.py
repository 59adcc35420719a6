"""Importing a producer's archive (`<root>/runs/<run_id>/`) through the one write path.

Reading never writes to the archive: it may be mounted read-only. Progress is the byte offset of
each run's log already imported, so a second import reads only what was appended since.
"""

from __future__ import annotations

import gc
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson
from django.db.models import Q

from retention.selectors import runs_deleted_among
from runs import reduction
from runs.models import Run
from runs.services import RunBatch, RunChange, RunDeletedError, run_batch_write
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


@dataclass(frozen=True, slots=True)
class RunFolder:
    run_id: str
    path: Path
    log_size: int  # -1 while the producer has not created the log yet
    has_graph: bool
    has_summary: bool


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

    @property
    def events(self) -> int:
        return sum(r.events for r in self.runs)


def _regular_file(path: Path) -> os.stat_result | None:
    """The file's stat, or None when it is absent, or is a symlink (refused: it may leave the archive)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    return info if stat.S_ISREG(info.st_mode) else None


def archive_scan(root: Path) -> tuple[list[RunFolder], list[str]]:
    """The run folders under `root/runs`, and a warning for every entry that was skipped."""
    runs_dir = root / "runs"
    if not runs_dir.is_dir():
        raise ArchiveError(f"{root} is not an archive: it has no runs/ folder")
    folders, warnings = [], []
    with os.scandir(runs_dir) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.is_symlink():
                warnings.append(f"skipped runs/{entry.name}: symlinks are not followed")
                continue
            if not entry.is_dir(follow_symlinks=False):
                continue
            if not reduction.run_id_valid(entry.name):
                warnings.append(f"skipped runs/{entry.name}: not a valid run id")
                continue
            path = Path(entry.path)
            log = _regular_file(path / LOG)
            for name in (LOG, GRAPH, SUMMARY):
                if (path / name).is_symlink():
                    warnings.append(f"skipped runs/{entry.name}/{name}: symlinks are not followed")
            folders.append(
                RunFolder(
                    run_id=entry.name,
                    path=path,
                    log_size=log.st_size if log else -1,
                    has_graph=_regular_file(path / GRAPH) is not None,
                    has_summary=_regular_file(path / SUMMARY) is not None,
                )
            )
    return folders, warnings


def _needs_import(folder: RunFolder, stored: tuple[int, bool, bool, bool] | None) -> bool:
    """Whether the folder holds anything not yet imported, judged from sizes alone (no reads)."""
    if stored is None:
        return folder.log_size >= 0 or folder.has_graph
    size_seen, has_graph, has_summary, shrank = stored
    if folder.log_size >= 0 and folder.log_size != size_seen and not shrank:
        return True
    return (folder.has_graph and not has_graph) or (folder.has_summary and not has_summary)


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


def _read_json(path: Path) -> Any:
    """A small JSON file, or a ValueError saying why not (a partial write is retried next time)."""
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"{path.name} is not readable JSON ({exc})") from exc


def _valid_events(
    change: RunChange, lines: list[bytes], first_line: int
) -> Iterator[tuple[dict[str, Any], str]]:
    """The events of complete log lines with their JSON text; a bad line becomes a diagnostic."""
    loads, validate, limit = orjson.loads, reduction.validate_event, reduction.MAX_EVENT_BYTES
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
                    yield event, raw.decode()
                    continue
                problem = "; ".join(f"{e.field or 'event'}: {e.message}" for e in errors) or (
                    "the event contains a NUL character"
                )
        change.diagnose(
            reduction.Diagnostic(
                "malformed_line",
                f"line {number} skipped: {problem}",
                line=number,
                details={"reason": problem, "text": raw[:200].decode("utf-8", "replace")},
            )
        )


def _import_run(change: RunChange, folder: RunFolder, warnings: list[str]) -> int:
    """Adds what the folder holds beyond what the run already has; returns the bytes read."""
    run = change.run
    if folder.has_graph and run.graph is None:
        try:
            size = os.lstat(folder.path / GRAPH).st_size
            if size > reduction.MAX_GRAPH_BYTES:
                raise ValueError(
                    f"graph.json is {size} bytes, over the {reduction.MAX_GRAPH_BYTES} a graph may be"
                )
            graph = _read_json(folder.path / GRAPH)
            problems = reduction.validate_graph(graph)
            if problems:
                raise ValueError(f"graph.json breaks the schema: {problems[0].field}: {problems[0].message}")
            change.set_graph(graph)
        except ValueError as exc:
            warnings.append(f"{folder.run_id}: {exc}; not imported, tried again next time")

    read = 0
    if folder.log_size >= 0 and not run.log_shrank:
        with open(folder.path / LOG, "rb") as log:
            size = os.fstat(log.fileno()).st_size
            run.log_size_seen = size
            change.progress_changed = True
            if size < run.log_offset:
                run.log_shrank = True
                change.diagnose(
                    reduction.Diagnostic(
                        "log_shrank",
                        f"the log is {size} bytes, shorter than the {run.log_offset} bytes already "
                        "imported; nothing stored was removed and the log is no longer read",
                        line=run.log_lines,
                        details={"size": size, "imported_bytes": run.log_offset},
                    )
                )
            else:
                log.seek(run.log_offset)
                data = log.read(size - run.log_offset)
                # A line is complete only once it ends in "\n"; an unfinished last line is a write in
                # progress and waits for the next import.
                end = data.rfind(b"\n") + 1
                lines = data[: end - 1].split(b"\n") if end else []
                change.extend(_valid_events(change, lines, first_line=run.log_lines + 1))
                run.log_offset += end
                run.log_lines += len(lines)
                read = end

    if folder.has_summary and run.summary is None:
        try:
            summary = _read_json(folder.path / SUMMARY)
            if not isinstance(summary, dict):
                raise ValueError("summary.json is not a JSON object")
            if reduction.json_too_deep(summary):
                raise ValueError(f"summary.json nests more than {reduction.MAX_JSON_DEPTH} levels")
            change.set_summary(summary)
        except ValueError as exc:
            warnings.append(f"{folder.run_id}: {exc}; not imported, tried again next time")
    return read


def archive_import(*, tenant: Tenant, root: Path, progress: ImportProgress | None = None) -> ArchiveReport:
    """Imports everything new under `root` for `tenant`: new runs, appended lines, late files."""
    folders, warnings = archive_scan(root)
    report = ArchiveReport(warnings=warnings, scanned=len(folders))
    with tenant_atomic(tenant):
        stored, deleted = {}, set()
        for run_id, offset, size_seen, has_graph, has_summary, shrank, deleted_at in (
            Run.objects.including_deleted()
            .filter(tenant=tenant)
            .annotate(has_graph=Q(graph__isnull=False), has_summary=Q(summary__isnull=False))
            .values_list(
                "run_id",
                "log_offset",
                "log_size_seen",
                "has_graph",
                "has_summary",
                "log_shrank",
                "deleted_at",
            )
        ):
            stored[run_id] = (offset, (size_seen, has_graph, has_summary, shrank))
            if deleted_at is not None:
                deleted.add(run_id)
        # A run with no row was never imported, or was hard-deleted: its retention record says which.
        new = [f.run_id for f in folders if f.run_id not in stored]
        deleted.update(runs_deleted_among(tenant=tenant, run_ids=new) if new else ())
    report.deleted = [f.run_id for f in folders if f.run_id in deleted]
    todo = [
        f
        for f in folders
        if f.run_id not in deleted and _needs_import(f, stored[f.run_id][1] if f.run_id in stored else None)
    ]
    offsets = {run_id: values[0] for run_id, values in stored.items()}
    if progress is not None:
        progress.start(sum(max(f.log_size - offsets.get(f.run_id, 0), 0) for f in todo))
    with _collector_paused():
        _import_chunks(tenant, todo, offsets, report, progress)
    return report


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pauses Python's cyclic garbage collector for a bulk import.

    It makes a pass every 700 new containers and, every so often, a full pass over every object
    Django keeps alive: on an import that costs more than the parsing itself (measured: 7.7 µs an
    event with it, 3.4 µs without). Events parsed from JSON form no cycles, so reference counting
    frees them all the same.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _import_chunks(
    tenant: Tenant,
    todo: list[RunFolder],
    offsets: dict[str, int],
    report: ArchiveReport,
    progress: ImportProgress | None,
) -> None:
    for chunk in _chunks(todo, offsets):

        def import_chunk(batch: RunBatch, chunk: list[RunFolder] = chunk) -> None:
            changes = batch.open(f.run_id for f in chunk)
            for folder in chunk:
                read = _import_run(changes[folder.run_id], folder, report.warnings)
                if progress is not None:
                    progress.advance(read)

        while True:
            try:
                _, changes = run_batch_write(tenant=tenant, write=import_chunk)
                break
            except RunDeletedError as exc:
                # Retention deleted the run since the scan: the chunk is written again without it.
                report.deleted.append(exc.run_id)
                chunk[:] = [f for f in chunk if f.run_id != exc.run_id]
        for change in changes:
            if change.news:
                run_import = RunImport(change.run.run_id, events=change.appended, run=change.run)
                for diagnostic in change.diagnostics:
                    run_import.diagnostics[diagnostic.severity] += 1
                report.runs.append(run_import)
