"""`manage.py retention [--dry-run] [--tenant SLUG]`: what retention would remove, then what it removed.

The same jobs as the daily Celery tasks (`retention.tasks`), run by hand: the way OSS mode keeps its
database small, and the way an operator looks before the scheduler leaps.
"""

from __future__ import annotations

import getpass
from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from kahn_site.checks import require_migrated
from retention import selectors
from retention.models import RetentionAction
from retention.services import RetentionOutcome, retention_sweep
from tenants.models import Tenant
from tenants.staff import staff_tenant_access

# Runs listed per tenant and action; the rest are counted.
SHOWN = 20


class Command(BaseCommand):
    help = (
        "Soft-deletes runs older than their plan keeps and hard-deletes those soft-deleted longer than its "
        "grace: first what would go, then what went."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="show what would go, and change nothing")
        parser.add_argument("--tenant", metavar="SLUG", help="one tenant (default: every tenant)")
        parser.add_argument(
            "--as-of",
            metavar="TIME",
            help="with --dry-run: what would go at this ISO 8601 time instead of now (plan ahead)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        require_migrated()
        now = timezone.now()
        if options["as_of"]:
            if not options["dry_run"]:
                raise CommandError("--as-of only goes with --dry-run: retention deletes as of now")
            now = _parse_time(options["as_of"])
        tenants = self._tenants(options["tenant"])
        actor = f"manage.py retention (user {getpass.getuser()})"
        for tenant in tenants:
            self._what_would_go(tenant, now, actor)
        if options["dry_run"]:
            self.stdout.write("dry run: nothing was deleted")
            return
        outcomes = retention_sweep(
            actions=(RetentionAction.HARD_DELETE, RetentionAction.SOFT_DELETE),
            actor=actor,
            now=now,
            tenants=tenants,
        )
        for outcome in outcomes:
            self._what_went(outcome)

    def _tenants(self, slug: str | None) -> list[Tenant]:
        tenants = Tenant.objects.select_related("plan").order_by("slug")
        if slug is None:
            return list(tenants)
        found = list(tenants.filter(slug=slug))
        if not found:
            raise CommandError(f"there is no tenant {slug!r}")
        return found

    def _what_would_go(self, tenant: Tenant, now: datetime, actor: str) -> None:
        plan = tenant.plan
        with staff_tenant_access(tenant=tenant, actor=actor, reason="retention: what would go"):
            hard = selectors.retention_due(
                selectors.hard_delete_candidates(tenant=tenant, plan=plan, now=now), show=SHOWN
            )
            soft = selectors.retention_due(
                selectors.soft_delete_candidates(tenant=tenant, plan=plan, now=now), show=SHOWN
            )
        self.stdout.write(self.style.MIGRATE_HEADING(f"{tenant.slug}: {selectors.retention_terms(plan)}"))
        cutoff = selectors.hard_delete_cutoff(plan, now)
        self.stdout.write(f"  to hard-delete (soft-deleted before {_time(cutoff)}): {_runs(hard)}")
        for run in hard.first:
            self.stdout.write(
                f"    {run.run_id:<40} soft-deleted {_time(run.deleted_at)}  {run.next_seq:>9,} events"
            )
        _more(self, hard)
        cutoff = selectors.soft_delete_cutoff(plan, now)
        self.stdout.write(f"  to soft-delete (last active before {_time(cutoff)}): {_runs(soft)}")
        for run in soft.first:
            last = run.last_event_at or run.created_at
            self.stdout.write(f"    {run.run_id:<40} last event   {_time(last)}  {run.next_seq:>9,} events")
        _more(self, soft)

    def _what_went(self, outcome: RetentionOutcome) -> None:
        records = outcome.records
        did = "hard-deleted" if outcome.action == RetentionAction.HARD_DELETE else "soft-deleted"
        events = sum(record.events for record in records)
        batches = len(outcome.batch_seconds)
        timing = f" in {batches} batches, the longest {outcome.longest_batch:.2f} s" if batches else ""
        self.stdout.write(f"{outcome.tenant.slug}: {did} {len(records)} runs ({events:,} events){timing}")
        for record in records[:SHOWN]:
            self.stdout.write(f"    {record.run_id}")
        if len(records) > SHOWN:
            self.stdout.write(f"    … and {len(records) - SHOWN} more")


def _parse_time(text: str) -> datetime:
    value = parse_datetime(text)
    if value is None:
        raise CommandError(f"--as-of {text!r} is not an ISO 8601 time (e.g. 2026-12-01T00:00:00Z)")
    return value if timezone.is_aware(value) else value.replace(tzinfo=UTC)


def _time(value: datetime | None) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M} UTC"


def _runs(due: selectors.RetentionDue) -> str:
    if not due.runs:
        return "none"
    return f"{due.runs} runs, {due.events:,} events"


def _more(command: BaseCommand, due: selectors.RetentionDue) -> None:
    if due.runs > len(due.first):
        command.stdout.write(f"    … and {due.runs - len(due.first)} more")
