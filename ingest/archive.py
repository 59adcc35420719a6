"""Importing a producer's archive (`<root>/runs/<run_id>/`) through the one write path.

Reading never writes to the archive: it may be mounted read-only. Progress is the byte offset of
each run's log already imported, so a second import reads only what was appended since.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson
from django.db.models import Q

from runs import reduction
from runs.models import Run
from runs.services import RunBatch, RunChange
from tenants.context import tenant_atomic
from tenants.models import Tenant

RUN_ID_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,63}$")
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
            if not RUN_ID_PATTERN.match(entry.name):
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


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _line_problem(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """The event on a log line, or None and the reason it is malformed."""
    if len(raw) > reduction.MAX_EVENT_BYTES:
        return None, f"the line is {len(raw)} bytes; one event is at most {reduction.MAX_EVENT_BYTES}"
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return None, f"not JSON: {exc}"
    errors = reduction.validate_event(event)
    if errors:
        return None, "; ".join(f"{e.field or 'event'}: {e.message}" for e in errors)
    # A NUL can only arrive escaped; look deeper only then (databases refuse NUL in text).
    if b"\\u0000" in raw and _has_nul(event):
        return None, "the event contains a NUL character"
    return event, ""


def _import_run(change: RunChange, folder: RunFolder, warnings: list[str]) -> int:
    """Adds what the folder holds beyond what the run already has; returns the bytes read."""
    run = change.run
    if folder.has_graph and run.graph is None:
        try:
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
                line_number = run.log_lines
                for raw in data[: end - 1].split(b"\n") if end else ():
                    line_number += 1
                    event, problem = _line_problem(raw)
                    if event is None:
                        change.diagnose(
                            reduction.Diagnostic(
                                "malformed_line",
                                f"line {line_number} skipped: {problem}",
                                line=line_number,
                                details={"reason": problem, "text": raw[:200].decode("utf-8", "replace")},
                            )
                        )
                        continue
                    change.append(event, raw.decode())
                run.log_offset += end
                run.log_lines = line_number
                read = end

    if folder.has_summary and run.summary is None:
        try:
            summary = _read_json(folder.path / SUMMARY)
            if not isinstance(summary, dict):
                raise ValueError("summary.json is not a JSON object")
            change.set_summary(summary)
        except ValueError as exc:
            warnings.append(f"{folder.run_id}: {exc}; not imported, tried again next time")
    return read


def archive_import(*, tenant: Tenant, root: Path, progress: ImportProgress | None = None) -> ArchiveReport:
    """Imports everything new under `root` for `tenant`: new runs, appended lines, late files."""
    folders, warnings = archive_scan(root)
    report = ArchiveReport(warnings=warnings, scanned=len(folders))
    with tenant_atomic(tenant):
        stored = {
            run_id: (offset, (size_seen, has_graph, has_summary, shrank))
            for run_id, offset, size_seen, has_graph, has_summary, shrank in Run.objects.filter(tenant=tenant)
            .annotate(has_graph=Q(graph__isnull=False), has_summary=Q(summary__isnull=False))
            .values_list("run_id", "log_offset", "log_size_seen", "has_graph", "has_summary", "log_shrank")
        }
    todo = [f for f in folders if _needs_import(f, stored[f.run_id][1] if f.run_id in stored else None)]
    offsets = {run_id: values[0] for run_id, values in stored.items()}
    if progress is not None:
        progress.start(sum(max(f.log_size - offsets.get(f.run_id, 0), 0) for f in todo))
    for chunk in _chunks(todo, offsets):
        with tenant_atomic(tenant):
            batch = RunBatch(tenant=tenant)
            changes = batch.open(f.run_id for f in chunk)
            for folder in chunk:
                read = _import_run(changes[folder.run_id], folder, report.warnings)
                if progress is not None:
                    progress.advance(read)
            batch.flush()
        for folder in chunk:
            change = changes[folder.run_id]
            if not change.news:
                continue
            run_import = RunImport(folder.run_id, events=len(change.events), run=change.run)
            for diagnostic in change.diagnostics:
                run_import.diagnostics[diagnostic.severity] += 1
            report.runs.append(run_import)
    return report
