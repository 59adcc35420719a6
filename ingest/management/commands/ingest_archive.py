import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import InterfaceError, OperationalError
from django.utils import timezone
from tqdm import tqdm

from ingest.archive import (
    ArchiveError,
    ArchiveReport,
    ArchiveSource,
    WarningsOnce,
    archive_import,
    archive_source,
    printable,
)
from kahn_site.checks import require_migrated
from runs.read_model import verdict_word
from tenants.models import LOCAL_TENANT_SLUG, Tenant

# Beyond this many changed runs the table would bury the totals: the rest are counted, not listed.
TABLE_ROWS = 50


class TqdmProgress:
    """A byte-counting progress bar on stderr; silent when stderr is not a terminal."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def start(self, total_bytes: int) -> None:
        self.bar = tqdm(
            total=total_bytes, unit="B", unit_scale=True, desc="importing", disable=None, file=sys.stderr
        )

    def advance(self, bytes_read: int) -> None:
        if self.bar is not None:
            self.bar.update(bytes_read)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Command(BaseCommand):
    help = (
        "Imports a KAHN archive (a folder, or s3://bucket/prefix, holding runs/<run_id>/), once or "
        "following it as it grows."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "path",
            nargs="?",
            help="the archive root, holding runs/: a folder, or s3://bucket/prefix (default: KAHN_ARCHIVE)",
        )
        parser.add_argument("--tenant", default=LOCAL_TENANT_SLUG, help="the tenant's slug (default: local)")
        parser.add_argument(
            "--follow", action="store_true", help="keep importing appended lines and new runs"
        )
        parser.add_argument("--interval", type=float, default=1.0, help="seconds between polls with --follow")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            self._handle(**options)
        except (OperationalError, InterfaceError) as exc:
            # No database, or it went away: fatal, and said in one sentence (a run the database
            # refuses is not fatal: the import goes on without it, see ingest.archive).
            lines = str(exc).strip().splitlines()
            raise CommandError(
                f"the database cannot be reached: {printable(lines[0] if lines else type(exc).__name__)}"
            ) from None

    def _handle(self, **options: Any) -> None:
        require_migrated()
        root: Path | str = options["path"] or settings.KAHN_ARCHIVE
        # Where the path came from, for a message about it: the command line, or the setting.
        self.origin = (
            ""
            if options["path"]
            else " (from KAHN_ARCHIVE: give a path, or set KAHN_ARCHIVE to the archive root)"
        )
        if options["interval"] <= 0:
            raise CommandError("--interval must be a positive number of seconds")
        try:
            tenant = Tenant.objects.get(slug=options["tenant"])
        except Tenant.DoesNotExist:
            raise CommandError(
                f"there is no tenant '{printable(options['tenant'])}': create it with "
                "`manage.py create_tenant`"
            ) from None
        try:
            # One source for every poll: an S3 client is made once.
            source = archive_source(root)
        except ArchiveError as exc:
            raise CommandError(f"{exc}{self.origin}") from None
        if not options["follow"]:
            # A person asked for this import: runs whose last import failed are tried again now.
            self._import(tenant, source, warnings=None, retry_now=True)
            return

        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            # A signal lets the transaction in flight finish, then the loop ends: nothing half-written.
            signal.signal(signum, lambda *_: stop.set())
        self.stdout.write(f"following {source.shown} every {options['interval']} s; Ctrl-C stops")
        warnings = WarningsOnce()
        while not stop.is_set():
            self._import(tenant, source, warnings=warnings, retry_now=False)
            stop.wait(options["interval"])
        self.stdout.write("stopped following")

    def _import(
        self, tenant: Tenant, root: ArchiveSource, *, warnings: WarningsOnce | None, retry_now: bool
    ) -> None:
        """One import. With `warnings` (following), quiet unless something changed, and a warning
        the previous poll gave is not given again."""
        progress = TqdmProgress()
        started = time.perf_counter()
        try:
            report = archive_import(tenant=tenant, root=root, progress=progress, retry_now=retry_now)
        except ArchiveError as exc:
            raise CommandError(f"{exc}{self.origin}") from None
        finally:
            progress.close()
        for warning in report.warnings if warnings is None else warnings.fresh(report.warnings):
            self.stderr.write(self.style.WARNING(f"warning: {warning}"))
        if warnings is not None and not report.runs:
            return
        if report.deleted:
            shown = ", ".join(report.deleted[:TABLE_ROWS]) + (
                " …" if len(report.deleted) > TABLE_ROWS else ""
            )
            self.stdout.write(
                f"{len(report.deleted)} runs of the archive were deleted by retention and are not "
                f"imported again: {shown}"
            )
        self._table(report)
        seconds = time.perf_counter() - started
        rate = f" ({report.events / seconds:,.0f} events/s)" if report.events and seconds > 0 else ""
        self.stdout.write(
            f"imported {report.events} events into {len(report.runs)} runs "
            f"({report.scanned} in the archive) in {seconds:.2f} s{rate}"
        )
        if report.failed:
            shown = ", ".join(report.failed[:TABLE_ROWS]) + (" …" if len(report.failed) > TABLE_ROWS else "")
            self.stdout.write(
                self.style.WARNING(
                    f"could not import {len(report.failed)} run{'s' if len(report.failed) > 1 else ''}: "
                    f"{shown} (the warnings above say why; every other run was imported)"
                )
            )

    def _table(self, report: ArchiveReport) -> None:
        if not report.runs:
            self.stdout.write("nothing new")
            return
        now = timezone.now()
        # A run's result in the history's words (clean, flaky, failed, running, interrupted).
        header = f"{'run':<32} {'new':>7} {'events':>7} {'err':>4} {'warn':>4} {'info':>4}  result"
        self.stdout.write(header)
        for item in report.runs[:TABLE_ROWS]:
            run = item.run
            assert run is not None
            counts = item.diagnostics
            self.stdout.write(
                f"{item.run_id:<32} {item.events:>7} {run.next_seq:>7} {counts['error']:>4} "
                f"{counts['warning']:>4} {counts['info']:>4}  {verdict_word(run.status_at(now), run.outcome)}"
            )
        if len(report.runs) > TABLE_ROWS:
            self.stdout.write(f"... and {len(report.runs) - TABLE_ROWS} more runs")
