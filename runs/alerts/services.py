"""Writes of alerts: rules (made, changed, removed, tested) and the outbox the write path fills.

`alerts_record` is called by the one write path (`runs.services.RunBatch.flush`) inside the
transaction of the run change: a notification is committed with the change that caused it, or not
at all, and the unique key (rule, run, type, node) with INSERT … ON CONFLICT DO NOTHING keeps it to
one whatever re-imports or concurrent writers do. A tenant without enabled rules costs one cache
read per batch.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from functools import partial
from statistics import median
from typing import Any

import orjson
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.core.validators import EmailValidator
from django.db import connection, transaction
from django.db.models.fields.json import KT
from django.utils import timezone

from runs.alerts.encryption import secret_encrypt, secret_rotated
from runs.alerts.models import (
    EVENT_TYPE,
    NODE_CONDITIONS,
    TEST_TYPE,
    AlertRule,
    ChannelKind,
    Condition,
    NodeStats,
    Notification,
    NotificationStatus,
)
from runs.alerts.wake import delivery_wake
from runs.models import Event, Run
from runs.reduction import Diagnostic as ReducedDiagnostic
from runs.selectors import stale_cutoff
from tenants.models import Tenant

# How long "this tenant has no enabled rule" is kept in the cache; a change of rules clears it.
RULES_CACHE_SECONDS = 30
DEFAULT_FACTOR = 2.0
DEFAULT_WINDOW = 20
MIN_WINDOW = 5
DEFAULT_THRESHOLD = 0.2
MAX_EMAIL_RECIPIENTS = 20


# ---------------------------------------------------------------- rules


class RuleInvalid(Exception):
    """A rule's body that cannot be stored; `problems` lists `{field, message}`."""

    code = "invalid_rule"

    def __init__(self, problems: list[dict[str, str]]) -> None:
        self.problems = problems
        names = ", ".join(dict.fromkeys(p["field"] for p in problems))
        super().__init__(f"the rule is invalid: {names}")

    @property
    def message(self) -> str:
        return str(self)

    @property
    def details(self) -> dict[str, Any]:
        return {"errors": [{"index": None, **p} for p in self.problems]}


@dataclass
class RuleSpec:
    """A rule's body as SPEC section 12 spells it, checked; `url` is None when not given (a change
    that keeps the stored channel)."""

    name: str
    condition: str
    run_id_glob: str = ""
    node: str = ""
    factor: float | None = None
    window: int | None = None
    threshold: float | None = None
    channel_kind: str = ""
    url: str | None = None
    to: list[str] = field(default_factory=list)
    enabled: bool = True
    cooldown_s: int = 0


def _text(problems: list[dict[str, str]], name: str, value: Any, *, limit: int, required: bool) -> str:
    if value is None or value == "":
        if required:
            problems.append({"field": name, "message": "This field is required."})
        return ""
    if not isinstance(value, str):
        problems.append({"field": name, "message": "Must be text."})
        return ""
    if len(value) > limit or "\x00" in value:
        problems.append({"field": name, "message": f"Must be at most {limit} characters, with no NUL."})
        return ""
    return value


def _number(
    problems: list[dict[str, str]],
    name: str,
    value: Any,
    *,
    minimum: float,
    maximum: float,
    whole: bool = False,
) -> Any:
    if value is None:
        return None
    number = isinstance(value, int) or (isinstance(value, float) and not whole)
    if isinstance(value, bool) or not number or not minimum <= value <= maximum:
        kind = "a whole number" if whole else "a number"
        problems.append({"field": name, "message": f"Must be {kind} from {minimum:g} to {maximum:g}."})
        return None
    return value


def _url(problems: list[dict[str, str]], name: str, value: Any) -> str:
    from urllib.parse import urlsplit

    text = _text(problems, name, value, limit=2000, required=True)
    if text:
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append({"field": name, "message": "Must be an http:// or https:// URL."})
            return ""
    return text


def rule_spec_parse(body: Any, *, existing: AlertRule | None = None) -> RuleSpec:
    """A rule's JSON body (SPEC section 12) checked; for a change (`existing`), what is missing is
    kept. Raises RuleInvalid listing every problem."""
    if not isinstance(body, Mapping):
        raise RuleInvalid([{"field": "", "message": "The body must be a JSON object."}])
    problems: list[dict[str, str]] = []
    known = {"name", "condition", "filter", "params", "channel", "enabled", "cooldown_s"}
    for name in body:
        if name not in known:
            problems.append({"field": str(name), "message": "Unknown field."})

    def part(name: str) -> Mapping[str, Any]:
        value = body.get(name) or {}
        if not isinstance(value, Mapping):
            problems.append({"field": name, "message": "Must be an object."})
            return {}
        return value

    spec = _spec_of(existing) if existing is not None else RuleSpec(name="", condition="")
    changing = existing is not None
    if "name" in body or not changing:
        spec.name = _text(problems, "name", body.get("name"), limit=100, required=True)
    if "condition" in body or not changing:
        condition = body.get("condition")
        if condition not in Condition.values:
            problems.append(
                {"field": "condition", "message": f"Must be one of {', '.join(Condition.values)}."}
            )
        else:
            spec.condition = condition
    if "filter" in body:
        filters = part("filter")
        spec.run_id_glob = _text(problems, "filter.run_id", filters.get("run_id"), limit=200, required=False)
        spec.node = _text(problems, "filter.node", filters.get("node"), limit=200, required=False)
    if "params" in body:
        params = part("params")
        spec.factor = _number(problems, "params.factor", params.get("factor"), minimum=1.0, maximum=1000.0)
        spec.window = _number(
            problems,
            "params.window",
            params.get("window"),
            minimum=MIN_WINDOW,
            maximum=NodeStats.MAX_WINDOW,
            whole=True,
        )
        spec.threshold = _number(
            problems, "params.threshold", params.get("threshold"), minimum=0.0, maximum=1.0
        )
    if "channel" in body or not changing:
        channel = part("channel")
        kind = channel.get("kind")
        if kind not in ChannelKind.values:
            problems.append(
                {"field": "channel.kind", "message": f"Must be one of {', '.join(ChannelKind.values)}."}
            )
        else:
            if kind != spec.channel_kind:
                spec.url, spec.to = None, []
            spec.channel_kind = kind
            if kind == ChannelKind.EMAIL:
                spec.to = _addresses(problems, channel.get("to"))
            elif "url" in channel or existing is None or existing.channel_kind != kind:
                spec.url = _url(problems, "channel.url", channel.get("url"))
    if "enabled" in body:
        if not isinstance(body["enabled"], bool):
            problems.append({"field": "enabled", "message": "Must be true or false."})
        else:
            spec.enabled = body["enabled"]
    if "cooldown_s" in body:
        cooldown = _number(
            problems, "cooldown_s", body["cooldown_s"], minimum=0, maximum=30 * 86400, whole=True
        )
        spec.cooldown_s = cooldown or 0
    if spec.node and spec.condition and spec.condition not in NODE_CONDITIONS:
        problems.append(
            {
                "field": "filter.node",
                "message": "Only node conditions (node_slow, node_flaky) filter by node.",
            }
        )
    if problems:
        raise RuleInvalid(problems)
    return spec


def _addresses(problems: list[dict[str, str]], value: Any) -> list[str]:
    if not isinstance(value, list) or not value or len(value) > MAX_EMAIL_RECIPIENTS:
        problems.append(
            {
                "field": "channel.to",
                "message": f"Must be a list of 1 to {MAX_EMAIL_RECIPIENTS} email addresses.",
            }
        )
        return []
    check = EmailValidator()
    for index, address in enumerate(value):
        try:
            if not isinstance(address, str):
                raise ValidationError("not text")
            check(address)
        except ValidationError:
            problems.append({"field": f"channel.to[{index}]", "message": "Enter a valid email address."})
    return [a for a in value if isinstance(a, str)]


def _spec_of(rule: AlertRule) -> RuleSpec:
    return RuleSpec(
        name=rule.name,
        condition=rule.condition,
        run_id_glob=rule.run_id_glob,
        node=rule.node,
        factor=rule.factor,
        window=rule.window,
        threshold=rule.threshold,
        channel_kind=rule.channel_kind,
        to=list(rule.channel_to),
        enabled=rule.enabled,
        cooldown_s=rule.cooldown_s,
    )


def webhook_secret_new() -> str:
    """A Standard Webhooks signing secret: `whsec_` and 24 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def _apply(rule: AlertRule, spec: RuleSpec) -> None:
    rule.name, rule.condition = spec.name, spec.condition
    rule.run_id_glob, rule.node = spec.run_id_glob, spec.node
    rule.factor, rule.window, rule.threshold = spec.factor, spec.window, spec.threshold
    rule.channel_kind, rule.channel_to = spec.channel_kind, spec.to
    rule.enabled, rule.cooldown_s = spec.enabled, spec.cooldown_s
    if spec.url is not None:
        rule.channel_url_encrypted = secret_encrypt(spec.url)
    if spec.channel_kind == ChannelKind.EMAIL:
        rule.channel_url_encrypted = ""


def rule_create(*, tenant: Tenant, spec: RuleSpec) -> tuple[AlertRule, str | None]:
    """Stores a rule; returns it with its webhook signing secret, which is shown this once."""
    rule = AlertRule(tenant=tenant)
    _apply(rule, spec)
    secret = None
    if spec.channel_kind == ChannelKind.WEBHOOK:
        secret = webhook_secret_new()
        rule.channel_secret_encrypted = secret_encrypt(secret)
    rule.save()
    _rules_changed(tenant)
    return rule, secret


def rule_update(*, tenant: Tenant, rule: AlertRule, spec: RuleSpec) -> tuple[AlertRule, str | None]:
    """Changes a rule; a rule that becomes a webhook gets a new secret (returned, shown once)."""
    was_webhook = rule.channel_kind == ChannelKind.WEBHOOK
    _apply(rule, spec)
    secret = None
    if spec.channel_kind == ChannelKind.WEBHOOK and not was_webhook:
        secret = webhook_secret_new()
        rule.channel_secret_encrypted = secret_encrypt(secret)
    elif spec.channel_kind != ChannelKind.WEBHOOK:
        rule.channel_secret_encrypted = ""
    AlertRule.objects.filter(tenant=tenant, pk=rule.pk).update(
        **{f.attname: getattr(rule, f.attname) for f in AlertRule._meta.concrete_fields if not f.primary_key}
    )
    _rules_changed(tenant)
    return rule, secret


def rule_enabled_set(*, tenant: Tenant, rule: AlertRule, enabled: bool) -> AlertRule:
    """Turns a rule on or off, all else kept: an off rule records nothing, and keeps its channel."""
    rule, _ = rule_update(tenant=tenant, rule=rule, spec=replace(_spec_of(rule), enabled=enabled))
    return rule


def rule_delete(*, tenant: Tenant, rule: AlertRule) -> None:
    AlertRule.objects.filter(tenant=tenant, pk=rule.pk).delete()
    _rules_changed(tenant)


def rule_send_test(*, tenant: Tenant, rule: AlertRule) -> Notification:
    """A `test` notification of the rule, delivered like any other (and listed with them)."""
    return Notification.objects.create(
        tenant=tenant,
        rule=rule,
        run_id="",
        type=TEST_TYPE,
        node=uuid.uuid4().hex,  # each test is its own notification
        details={"message": f"A test of the alert rule {rule.name!r}."},
        webhook_id=_webhook_id(),
    )


def channel_secrets_rotate(*, tenant: Tenant) -> int:
    """Re-encrypts the tenant's channel secrets with the first key of KAHN_ENCRYPTION_KEY."""
    count = 0
    for rule in AlertRule.objects.filter(tenant=tenant):
        url, secret = rule.channel_url_encrypted, rule.channel_secret_encrypted
        AlertRule.objects.filter(tenant=tenant, pk=rule.pk).update(
            channel_url_encrypted=secret_rotated(url) if url else "",
            channel_secret_encrypted=secret_rotated(secret) if secret else "",
        )
        count += 1
    return count


# ---------------------------------------------------------------- the outbox


@dataclass(frozen=True)
class ActiveRule:
    """What the write path needs of an enabled rule: small, and cacheable."""

    id: int
    condition: str
    run_id_glob: str
    node: str
    cooldown_s: int
    factor: float = DEFAULT_FACTOR
    window: int = DEFAULT_WINDOW
    threshold: float = DEFAULT_THRESHOLD

    def matches(self, run_id: str) -> bool:
        return not self.run_id_glob or fnmatchcase(run_id, self.run_id_glob)

    def matches_node(self, node: str) -> bool:
        return not self.node or self.node == node


def _active(rule: AlertRule) -> ActiveRule:
    return ActiveRule(
        id=rule.pk,
        condition=rule.condition,
        run_id_glob=rule.run_id_glob,
        node=rule.node,
        cooldown_s=rule.cooldown_s,
        factor=rule.factor if rule.factor is not None else DEFAULT_FACTOR,
        window=rule.window if rule.window is not None else DEFAULT_WINDOW,
        threshold=rule.threshold if rule.threshold is not None else DEFAULT_THRESHOLD,
    )


def _cache_key(tenant_id: int) -> str:
    return f"kahn-alerts:rules:{tenant_id}"


def _rules_changed(tenant: Tenant) -> None:
    key = _cache_key(tenant.pk)
    cache.delete(key)
    # And once more after commit: a writer may have cached the old rules in between.
    transaction.on_commit(partial(cache.delete, key), robust=True)


def active_rules(*, tenant: Tenant) -> list[ActiveRule]:
    """The tenant's enabled rules. The cache only answers "none" (most tenants, most batches): a
    rule removed elsewhere must never be read from a stale copy, so rules themselves are read here."""
    key = _cache_key(tenant.pk)
    try:
        has_rules = cache.get(key)
    except Exception:  # an unreachable cache must not stop runs from being written
        has_rules = None
    if has_rules == 0:
        return []
    rules = [
        _active(r)
        for r in AlertRule.objects.filter(tenant=tenant, enabled=True).only(
            "pk", "condition", "run_id_glob", "node", "cooldown_s", "factor", "window", "threshold"
        )
    ]
    with suppress(Exception):  # as above: the database answered
        cache.set(key, 1 if rules else 0, RULES_CACHE_SECONDS)
    return rules


@dataclass(frozen=True)
class RunNews:
    """What the write path tells the outbox about one run a batch changed."""

    run: Run
    # The run had ended before this batch (its outcome was known): completing is not news again.
    was_complete: bool
    diagnostics: Sequence[ReducedDiagnostic] = ()
    # (node, final state, attempts) of each node, asked only when a node rule needs them.
    node_states: Callable[[], Sequence[tuple[str, str, int]]] = list
    # The run's `node_attempt` events (valid ones, in log order) when the batch wrote its whole log:
    # the write path had them in hand. None when an earlier batch wrote some: they are read back.
    attempt_records: Sequence[Mapping[str, Any]] | None = None

    @property
    def completed(self) -> bool:
        return self.run.complete and not self.was_complete


def _webhook_ids(count: int) -> list[str]:
    """`count` webhook message ids (`msg_` and 128 random bits in hex), drawn from the system in one
    call rather than one each: every call lets go of Python's lock, which an import's other thread takes."""
    digits = secrets.token_hex(16 * count)
    return [f"msg_{digits[start : start + 32]}" for start in range(0, len(digits), 32)]


def _webhook_id() -> str:
    return _webhook_ids(1)[0]


@dataclass(frozen=True, slots=True)
class _Offered:
    """A notification the batch offers: its unique key with its rule, and what it says."""

    rule: ActiveRule
    run_id: str
    node: str
    details: dict[str, Any]


def _fired(rule: ActiveRule, news: RunNews) -> list[tuple[str, dict[str, Any]]]:
    """The (node, details) of each notification `rule` gives for this change."""
    run = news.run
    if rule.condition in (Condition.RUN_FAILED, Condition.RUN_FLAKY):
        wanted = "failed" if rule.condition == Condition.RUN_FAILED else "clean_with_flake"
        if run.complete and not news.was_complete and run.outcome == wanted:
            return [
                (
                    "",
                    {
                        "outcome": run.outcome,
                        "failed_nodes": list(run.failed_nodes),
                        "exit_code": run.exit_code,
                    },
                )
            ]
    elif rule.condition == Condition.DIAGNOSTIC_ERROR:
        errors = [d for d in news.diagnostics if d.severity == "error"]
        if errors:
            first = errors[0]
            return [
                ("", {"code": first.code, "message": first.message, "seq": first.seq, "count": len(errors)})
            ]
    return []


def alerts_record(*, tenant: Tenant, news: Iterable[RunNews], now: datetime | None = None) -> int:
    """Records the notifications a batch's run changes give, in the caller's transaction (the run
    change's own). Returns how many rows were offered (duplicates are dropped by the database)."""
    rules = active_rules(tenant=tenant)
    if not rules:
        return 0
    now = now or timezone.now()
    offered: list[_Offered] = []
    news = list(news)
    node_rules = [rule for rule in rules if rule.condition in NODE_CONDITIONS]
    if node_rules:
        offered += _node_notifications(tenant, node_rules, [item for item in news if item.completed])
    for item in news:
        for rule in rules:
            if not rule.matches(item.run.run_id):
                continue
            for node, details in _fired(rule, item):
                offered.append(_Offered(rule, item.run.run_id, node, details))
    if any(row.rule.cooldown_s for row in offered):
        # Asked once per rule: nothing this batch offers is stored before the answer is used.
        cooling = {rule.id: _cooling_down(tenant, rule, now) for rule in {row.rule for row in offered}}
        offered = [row for row in offered if not cooling[row.rule.id]]
    if offered:
        _notifications_insert(tenant, offered, now)
        _wake_delivery()
    return len(offered)


def _notifications_insert(tenant: Tenant, offered: list[_Offered], now: datetime) -> None:
    """INSERT … ON CONFLICT DO NOTHING on (rule, run, type, node): a re-import or a concurrent
    writer's notification is already there, and this one is not another. On PostgreSQL the rows go
    as one JSON parameter (as the write path's own rows do, `runs.sql`): a model instance and a
    placeholder per value cost an import's batch more than its notifications are worth."""
    webhook_ids = _webhook_ids(len(offered))
    if connection.vendor != "postgresql":
        Notification.objects.bulk_create(
            [
                Notification(
                    tenant=tenant,
                    rule_id=row.rule.id,
                    run_id=row.run_id,
                    type=EVENT_TYPE[Condition(row.rule.condition)],
                    node=row.node,
                    details=row.details,
                    created_at=now,
                    next_attempt_at=now,
                    webhook_id=webhook_id,
                )
                for row, webhook_id in zip(offered, webhook_ids, strict=True)
            ],
            ignore_conflicts=True,
        )
        return
    records = orjson.dumps(
        [
            {
                "rule_id": row.rule.id,
                "run_id": row.run_id,
                "type": EVENT_TYPE[Condition(row.rule.condition)],
                "node": row.node,
                "details": row.details,
                "webhook_id": webhook_id,
            }
            for row, webhook_id in zip(offered, webhook_ids, strict=True)
        ]
    ).decode()
    table = connection.ops.quote_name(Notification._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (tenant_id, rule_id, run_id, type, node, details, "
            "created_at, next_attempt_at, webhook_id, status, attempts) "
            "SELECT %s, r.rule_id, r.run_id, r.type, r.node, r.details, %s, %s, r.webhook_id, %s, 0 "
            "FROM jsonb_to_recordset(%s::jsonb) "
            "AS r(rule_id bigint, run_id text, type text, node text, details jsonb, webhook_id text) "
            "ON CONFLICT DO NOTHING",
            [tenant.pk, now, now, NotificationStatus.PENDING.value, records],
        )


def _successful_durations(tenant: Tenant, completed: Sequence[RunNews]) -> dict[int, dict[str, list[float]]]:
    """Per run, per node: the durations of its successful attempts, in log order. From the records
    the write path has in hand when it wrote the run's whole log; otherwise from one query for the
    other runs a batch completed, reading their attempt records only (never another run's)."""
    found: dict[int, dict[str, list[float]]] = {}
    stored: list[int] = []
    for item in completed:
        durations = found[item.run.pk] = {}
        if item.attempt_records is None:
            stored.append(item.run.pk)
            continue
        for record in item.attempt_records:
            # The same tests as the query's below, on the event as validated (`ok` a boolean,
            # `duration_s` a number).
            node, duration = record.get("node"), record.get("duration_s")
            if node and record.get("ok") is True and duration is not None:
                durations.setdefault(node, []).append(float(duration))
    if not stored:
        return found
    # Only the two fields, extracted by the database: the records themselves are not decoded here.
    records = (
        Event.objects.filter(tenant=tenant, run_id__in=stored, kind="node_attempt")
        .order_by("run_id", "seq")
        .values_list("run_id", "node", KT("payload__ok"), KT("payload__duration_s"))
    )
    for run_pk, node, ok, duration in records:
        if node and ok in ("true", "1") and duration is not None:
            try:
                seconds = float(duration)
            except ValueError:  # validated as a number on the way in; a stored oddity is no alert
                continue
            found[run_pk].setdefault(node, []).append(seconds)
    return found


def _node_notifications(tenant: Tenant, rules: list[ActiveRule], completed: list[RunNews]) -> list[_Offered]:
    """`node_slow` and `node_flaky` for the runs this batch completed, against each node's own
    statistics (`NodeStats`), which are then advanced by these runs: no history is read again."""
    if not completed:
        return []
    # An import may complete many runs in one batch: each is measured against those started before.
    completed = sorted(completed, key=_started_order)
    durations = _successful_durations(tenant, completed)
    states = {item.run.pk: item.node_states() for item in completed}
    nodes = sorted(
        {node for found in durations.values() for node in found}
        | {node for s in states.values() for node, _state, _attempts in s}
    )
    # Locked in node order: concurrent writers of runs with common nodes advance them one at a time.
    stats = {
        s.node_id: s
        for s in NodeStats.objects.select_for_update()
        .filter(tenant=tenant, node_id__in=nodes)
        .order_by("node_id")
    }
    # Advanced in memory as lists, oldest first, and cut to the newest MAX_WINDOW when written back
    # once: no rule's window is longer, so each reads the same values as from the stored row.
    keep = NodeStats.MAX_WINDOW
    recent = {node: (list(s.durations), list(s.flakes)) for node, s in stats.items()}
    rows: list[_Offered] = []
    for item in completed:
        run_id = item.run.run_id
        matching = [rule for rule in rules if rule.matches(run_id)]
        slow = [rule for rule in matching if rule.condition == Condition.NODE_SLOW]
        flaky = [rule for rule in matching if rule.condition == Condition.NODE_FLAKY]
        for node, taken in durations[item.run.pk].items():
            node_durations = (recent.get(node) or recent.setdefault(node, ([], [])))[0]
            for rule in slow:
                if not rule.matches_node(node) or len(node_durations) < MIN_WINDOW:
                    continue
                earlier, slowest = node_durations[-rule.window :], max(taken)
                # The median is at least the fastest: an attempt within `factor` of the fastest is
                # within it of the median too, and most are, so the sort is mostly spared.
                if slowest <= rule.factor * min(earlier):
                    continue
                typical = median(earlier)
                if slowest > rule.factor * typical:
                    details = {
                        "duration_s": slowest,
                        "median_s": typical,
                        "factor": rule.factor,
                        "window": len(earlier),
                    }
                    rows.append(_Offered(rule, run_id, node, details))
            node_durations.extend(taken)
        for node, state, attempts in states[item.run.pk]:
            if state not in ("done", "failed"):
                continue
            node_flakes = (recent.get(node) or recent.setdefault(node, ([], [])))[1]
            flaked = 1 if state == "done" and attempts > 1 else 0
            # A run in which the node did not flake cannot raise its flake rate: no rule to ask.
            for rule in flaky if flaked else ():
                if not rule.matches_node(node):
                    continue
                before = node_flakes[-rule.window :]
                after = [*before, flaked][-rule.window :]
                rate_before = sum(before) / len(before) if before else 0.0
                rate_after = sum(after) / len(after)
                if len(after) >= MIN_WINDOW and rate_before <= rule.threshold < rate_after:
                    details = {
                        "flake_rate": round(rate_after, 4),
                        "threshold": rule.threshold,
                        "window": len(after),
                    }
                    rows.append(_Offered(rule, run_id, node, details))
            node_flakes.append(flaked)
    NodeStats.objects.bulk_create(
        [
            NodeStats(
                tenant=tenant, node_id=node, durations=node_durations[-keep:], flakes=node_flakes[-keep:]
            )
            for node, (node_durations, node_flakes) in recent.items()
        ],
        update_conflicts=True,
        unique_fields=["tenant", "node_id"],
        update_fields=["durations", "flakes"],
    )
    return rows


def _started_order(item: RunNews) -> tuple[float, str]:
    started = item.run.started
    return (started.timestamp() if started is not None else float("inf"), item.run.run_id)


def _cooling_down(tenant: Tenant, rule: ActiveRule, now: datetime) -> bool:
    if not rule.cooldown_s:
        return False
    since = now - timedelta(seconds=rule.cooldown_s)
    return Notification.objects.filter(tenant=tenant, rule_id=rule.id, created_at__gt=since).exists()


def _wake_delivery() -> None:
    """Tells the delivery loop of this process (OSS `serve`) that something is due, after commit."""
    transaction.on_commit(delivery_wake, robust=True)


# How far back the periodic check looks for runs that went silent (a missed tick is caught up).
INTERRUPTED_LOOKBACK = timedelta(days=7)


def run_interrupted_check(*, tenant: Tenant, now: datetime | None = None) -> int:
    """The periodic check: a notification for each run that became interrupted (no `run_end`,
    silent past KAHN_STALE_AFTER) after the rule was made. The unique key keeps each to one, so
    every tick may look again at the same runs. Returns how many were offered."""
    rules = list(AlertRule.objects.filter(tenant=tenant, enabled=True, condition=Condition.RUN_INTERRUPTED))
    if not rules:
        return 0
    now = now or timezone.now()
    cutoff = stale_cutoff(now)
    oldest_rule = min(rule.created_at for rule in rules)
    since = max(now - INTERRUPTED_LOOKBACK, oldest_rule - (now - cutoff))
    silent = Run.objects.filter(
        tenant=tenant, complete=False, last_event_at__lt=cutoff, last_event_at__gte=since
    ).only("run_id", "last_event_at")
    rows = []
    for run in silent:
        assert run.last_event_at is not None  # filtered above
        became_interrupted = run.last_event_at + (now - cutoff)
        for rule in rules:
            if became_interrupted < rule.created_at or (
                rule.run_id_glob and not fnmatchcase(run.run_id, rule.run_id_glob)
            ):
                continue
            if rule.cooldown_s and _cooling_down(tenant, _active(rule), now):
                continue
            rows.append(
                Notification(
                    tenant=tenant,
                    rule=rule,
                    run_id=run.run_id,
                    type=EVENT_TYPE[Condition.RUN_INTERRUPTED],
                    node="",
                    details={"last_event_at": run.last_event_at.isoformat()},
                    created_at=now,
                    next_attempt_at=now,
                    webhook_id=_webhook_id(),
                )
            )
    if rows:
        Notification.objects.bulk_create(rows, ignore_conflicts=True)
    return len(rows)
