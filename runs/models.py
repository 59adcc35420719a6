"""The event store: runs, their append-only events, diagnostics, and per-node final states.

A run row is materialised by the write path (`runs.services`) from the reduction, so history pages
never re-read logs; it creates a run's row before the run's first event. Everything here belongs
to a tenant and carries `tenant_id` itself, so scoping (and, in cloud mode, row-level security)
never needs a join.
"""

from datetime import datetime, timedelta
from typing import TypeVar

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from tenants.context import pre_tenant_lookup
from tenants.models import Tenant
from tenants.scoping import TenantScopedManager

_M = TypeVar("_M", bound=models.Model)


class RunManager(TenantScopedManager["Run"]):
    """The current tenant's runs that retention has not deleted: what every reader sees.

    The rule lives here, in the default manager, so the API, the pages, counts and live updates
    cannot forget it. `including_deleted()` is the spelled-out exception for the three that must
    see a soft-deleted run: the write path (to refuse it), retention itself, and the admin's restore.
    """

    def get_queryset(self) -> models.QuerySet["Run"]:
        return super().get_queryset().filter(deleted_at__isnull=True)

    def including_deleted(self) -> models.QuerySet["Run"]:
        """The tenant's runs, soft-deleted ones too (still scoped to the tenant)."""
        return super().get_queryset()


class RunPartManager(TenantScopedManager[_M]):
    """Events, diagnostics and node rows of runs a reader may see: a soft-deleted run's parts are
    hidden with it, whichever way a query reaches them (a node page, an events query by run id)."""

    def get_queryset(self) -> models.QuerySet[_M]:
        return super().get_queryset().filter(run__deleted_at__isnull=True)


class Outcome(models.TextChoices):
    CLEAN = "clean"
    CLEAN_WITH_FLAKE = "clean_with_flake"
    FAILED = "failed"


class Run(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="runs")
    run_id = models.CharField(max_length=64)

    # The row of SPEC section 4, as the reduction last left it.
    started = models.DateTimeField(null=True, blank=True)
    ended = models.DateTimeField(null=True, blank=True)
    duration_s = models.FloatField(null=True, blank=True)
    # SPEC: a run without run_end has outcome null, which is not the same as an empty string.
    outcome = models.CharField(max_length=20, choices=Outcome.choices, null=True, blank=True)  # noqa: DJ001
    total_nodes = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    blocked = models.PositiveIntegerField(default=0)
    # Sums of attempts, each up to 2**31 - 1 (SPEC section 2): two nodes can outgrow 32 bits.
    total_attempts = models.PositiveBigIntegerField(default=0)
    flake_retries = models.PositiveBigIntegerField(default=0)
    exit_code = models.IntegerField(null=True, blank=True)
    failed_nodes = models.JSONField(default=list)
    node_attempts = models.JSONField(default=dict)
    complete = models.BooleanField(default=False)
    last_event_at = models.DateTimeField(null=True, blank=True)

    # Stored diagnostics by severity; `died_mid_attempt` is added when read, as it depends on time.
    # Like seqs and line numbers, they count up to 2**63 - 1 (SPEC section 2).
    errors = models.PositiveBigIntegerField(default=0)
    warnings = models.PositiveBigIntegerField(default=0)
    infos = models.PositiveBigIntegerField(default=0)

    next_seq = models.PositiveBigIntegerField(default=0, help_text="events stored; the next event's seq")
    reduction_state = models.JSONField(default=dict)
    graph = models.JSONField(null=True, blank=True)
    summary = models.JSONField(null=True, blank=True, help_text="the producer's summary.json, if any")

    # Archive import progress: bytes and complete lines of transitions.jsonl already imported, and
    # the file's size when last read (it differs from the offset while a last line is unfinished).
    log_offset = models.BigIntegerField(default=0)
    log_size_seen = models.BigIntegerField(default=0)
    log_lines = models.PositiveBigIntegerField(default=0)
    log_shrank = models.BooleanField(default=False)
    # The archive import's last failure for this run: something the validation let through that the
    # database refused. Nothing of that attempt was stored; it is shown on the run's page and tried
    # again after a delay that doubles with each failure. Cleared by the next import that succeeds.
    # Database defaults too: the write path inserts run rows by hand, naming only the columns it owns.
    import_error = models.TextField(blank=True, default="", db_default="")
    import_failures = models.PositiveIntegerField(default=0, db_default=0)
    import_retry_at = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    # Retention (SPEC section 9): a soft-deleted run is hidden everywhere until it is restored or
    # hard-deleted; the `retention` app's records say when, why and by whom.
    deleted_at = models.DateTimeField(
        null=True, blank=True, help_text="soft-deleted by retention at this time; hidden until restored"
    )
    restored_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="restored from a soft delete at this time; its retention starts again",
    )

    # Queries need a current tenant and see only its rows (tenants.scoping), and never deleted runs.
    objects = RunManager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "run_id"], name="run_unique_per_tenant")]
        indexes = [
            models.Index(fields=["tenant", "-started", "-id"], name="run_newest_first"),
            # The daily retention scans: runs past their plan's days, and soft-deleted runs past grace.
            models.Index(
                fields=["tenant", "last_event_at"], condition=Q(deleted_at__isnull=True), name="run_expiry"
            ),
            models.Index(
                fields=["tenant", "deleted_at"],
                condition=Q(deleted_at__isnull=False),
                name="run_soft_deleted",
            ),
        ]

    def __str__(self) -> str:
        return self.run_id

    def status_at(self, now: datetime) -> str:
        """complete, running, or interrupted once its last event is older than KAHN_STALE_AFTER."""
        return run_status(self.complete, self.last_event_at or self.created_at, now)


def run_status(complete: bool, last_heard: datetime, now: datetime) -> str:
    """`Run.status_at` from the run's fields, for readers that hold them without the run."""
    if complete:
        return "complete"
    stale = now - timedelta(seconds=settings.KAHN_STALE_AFTER)
    return "interrupted" if last_heard < stale else "running"


class Event(models.Model):
    """One line of a run's log. `seq` is append order; views and the reduction follow it, never `ts`."""

    pk = models.CompositePrimaryKey("run_id", "seq")
    # The primary key (run_id, seq) already indexes run_id: no second index on the foreign key.
    # No database constraint either: checking a million rows' keys at commit costs more than
    # storing them. The write path (runs.services), the only writer, creates the run's row first
    # and holds its lock.
    run = models.ForeignKey(
        Run, on_delete=models.CASCADE, db_index=False, db_constraint=False, related_name="events"
    )
    seq = models.PositiveBigIntegerField()  # 0 to 2**63 - 1 (SPEC section 2)
    tenant = models.ForeignKey(
        Tenant, on_delete=models.PROTECT, db_index=False, db_constraint=False, related_name="+"
    )
    ts = models.DateTimeField()
    kind = models.CharField(max_length=64)
    node = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001 (run events have none)
    payload = models.JSONField(help_text="the event as the producer wrote it")

    objects = RunPartManager()

    def __str__(self) -> str:
        return f"{self.run_id}#{self.seq} {self.kind}"


class Severity(models.TextChoices):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


class Diagnostic(models.Model):
    # On PostgreSQL the constraint is (run_id, tenant_id) to the run's (id, tenant_id), so both rows
    # live with their tenant when tables are distributed (tenants.sharding).
    run = models.ForeignKey(Run, on_delete=models.CASCADE, db_constraint=False, related_name="diagnostics")
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, db_index=False, related_name="+")
    code = models.CharField(max_length=40)
    severity = models.CharField(max_length=10, choices=Severity.choices)
    seq = models.PositiveBigIntegerField(null=True, blank=True)
    line = models.PositiveBigIntegerField(null=True, blank=True)
    message = models.TextField()
    details = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)

    objects = RunPartManager()

    class Meta:
        ordering = ["run", "id"]

    def __str__(self) -> str:
        return f"{self.code} in {self.run_id}"


class RunNode(models.Model):
    """A node's final state in one run: answers "runs that have node X" and "how flaky is X"."""

    # No database constraints, as for events: an import writes a node row per node of every run,
    # and checking each row's run at commit cost more than a third of the import's floor (README,
    # Benchmarks). The write path, the only writer, creates the run's row first and holds its lock;
    # retention deletes a run's node rows with it. The (run, node) unique index below leads with
    # run_id: no second index on the foreign key.
    run = models.ForeignKey(
        Run, on_delete=models.CASCADE, db_index=False, db_constraint=False, related_name="nodes"
    )
    tenant = models.ForeignKey(
        Tenant, on_delete=models.PROTECT, db_index=False, db_constraint=False, related_name="+"
    )
    node_id = models.CharField(max_length=200)
    position = models.PositiveIntegerField(help_text="graph order, then order of first appearance")
    state = models.CharField(max_length=10)
    attempts = models.PositiveIntegerField(default=0)

    objects = RunPartManager()

    class Meta:
        # The tenant last: a key that can be distributed by tenant (tenants.sharding).
        constraints = [
            models.UniqueConstraint(fields=["run", "node_id", "tenant"], name="runnode_unique_per_run")
        ]
        # By node, then state: "runs that have node X" and "runs where X failed" both use it.
        indexes = [models.Index(fields=["tenant", "node_id", "state"], name="runnode_by_node_state")]

    def __str__(self) -> str:
        return f"{self.node_id} in {self.run_id}"


class BadgeManager(TenantScopedManager["Badge"]):
    def pre_tenant_by_hash(self, token_hash: str) -> "Badge | None":
        """The badge with this token hash, with its tenant, read before the tenant is known: a badge
        is served to anyone who has its URL. On PostgreSQL only `kahn.badge_hash` is set, which the
        table's read-only lookup policy admits (`tenants.context.pre_tenant_lookup`)."""
        with pre_tenant_lookup(BADGE_HASH_SETTING, token_hash):
            # Unscoped by tenant in code: the hash is the only key, and the database admits its row alone.
            return self.unscoped().select_related("tenant").filter(token_hash=token_hash).first()


# The setting the badges table's lookup policy reads (runs/migrations/0001_initial.py).
BADGE_HASH_SETTING = "kahn.badge_hash"


class Badge(models.Model):
    """A status badge: the result of the latest complete run whose id matches `pattern`, served at
    an unguessable URL without sign-in. Only a hash of the URL's token is stored; the URL is shown
    once, when the badge is made. Revoked, never deleted, so the list keeps what was published."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="badges")
    pattern = models.CharField(max_length=64, help_text="a run id glob: * any run of characters, ? one")
    token_hash = models.CharField(max_length=64, unique=True, help_text="SHA-256 of the URL's token")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = BadgeManager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"badge {self.pattern}"
