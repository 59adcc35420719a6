"""The reduction: from a run's event log to its row (SPEC section 4) and its diagnostics.

Pure Python, no Django: the archive importer, the ingest API and the tests all feed the same
``RunReduction`` one event at a time, in ``seq`` order. Its state is O(nodes), not O(events), and
round-trips through JSON, so a run row can carry it and appending N events to a run of M events
costs O(N), never a re-read of the M already stored. A reader that replays a stored log asks for
its history too (`RunHistory`): every attempt as the same rules saw it, which the timeline lays out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

# One serialized event is at most PIPE_BUF bytes: the producer's appends are atomic up to that size.
MAX_EVENT_BYTES = 4096

# The bounds of SPEC section 2: whatever the schema accepts, both databases store and every read
# gives back. Attempts and exit codes fit a 32-bit integer column, seqs a 64-bit one.
MAX_ATTEMPT = 2**31 - 1
MIN_EXIT_CODE, MAX_EXIT_CODE = -(2**31), 2**31 - 1
MAX_DURATION_S = 10**9
MAX_SEQ = 2**63 - 1
MAX_GRAPH_NODES = 10_000
MAX_GRAPH_EDGES = 100_000
MAX_GRAPH_BYTES = 8 * 1024 * 1024
# How deeply an event, a graph or a summary may nest. orjson writes at most 254 levels and
# Python's json reads fewer than 1,000: this leaves room for the envelopes the API and the live
# socket wrap around an event, and no producer needs more.
MAX_JSON_DEPTH = 128

NODE_STATES = ("pending", "running", "done", "failed", "blocked")
# A run id (SPEC section 2). Always `fullmatch`: with `match`, "$" would accept a trailing newline.
RUN_ID_PATTERN = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_-]{0,63}")
# The longest node id and event kind stored (the event store's columns hold no more).
MAX_NODE_ID = 200
MAX_EVENT_KIND = 64
KNOWN_EVENTS = ("run_start", "transition", "node_attempt", "run_end")

SEVERITY = {
    "malformed_line": "error",
    "missing_run_start": "error",
    "events_after_run_end": "error",
    "log_shrank": "error",
    "attempt_without_record": "warning",
    "invalid_transition": "warning",
    "unknown_node": "warning",
    "summary_mismatch": "warning",
    "run_id_mismatch": "warning",
    "died_mid_attempt": "info",
    "unknown_event": "info",
    "ts_went_back": "info",
}

# The fields of a run row (SPEC section 4, besides run_id): what `RunReduction.row()` gives, what
# summary.json also carries (compared for `summary_mismatch`), and what the run row stores.
SUMMARY_FIELDS = (
    "started",
    "ended",
    "duration_s",
    "outcome",
    "total_nodes",
    "done",
    "failed",
    "blocked",
    "total_attempts",
    "flake_retries",
    "exit_code",
    "failed_nodes",
    "node_attempts",
)


@dataclass(frozen=True, slots=True)
class Diagnostic:
    code: str
    message: str
    seq: int | None = None
    line: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def severity(self) -> str:
        return SEVERITY[self.code]


@dataclass(frozen=True, slots=True)
class FieldError:
    """One reason an event breaks the schema: which field, and what is wrong with it."""

    field: str
    message: str


# ---------------------------------------------------------------- schema


def run_id_valid(value: str) -> bool:
    return RUN_ID_PATTERN.fullmatch(value) is not None


def json_has_nul(text: bytes, value: Any) -> bool:
    """Whether parsed JSON holds a NUL character anywhere (PostgreSQL refuses NUL in text and jsonb).

    In JSON text a NUL can only arrive escaped, so the walk runs only when `text` has the escape.
    """
    return b"\\u0000" in text and _holds_nul(value)


def _holds_nul(value: Any) -> bool:
    # Walked without recursion (as `json_too_deep`): a refused event may nest far deeper than
    # Python's recursion limit, and is still looked at for a NUL to report.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def parse_ts(value: str) -> datetime:
    """An RFC 3339 timestamp with a zone (``Z``, ``z`` or an offset up to ±23:59), as its UTC
    instant; a ValueError when it is not one, or when that instant falls outside years 1 to 9999."""
    instant = ts_utc(value)
    if instant is None:
        raise ValueError(f"not an RFC 3339 timestamp in years 1-9999 UTC: {value!r}")
    return instant


# RFC 3339 only (not every ISO 8601 form Python accepts), so that what is accepted is what the
# contract says; fromisoformat then rejects impossible dates such as month 13.
_RFC3339 = re.compile(
    r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:[Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)"
)


@lru_cache(maxsize=8192)
def ts_utc(value: str) -> datetime | None:
    """The UTC instant of a timestamp, or None when it is not valid (see `parse_ts`).

    The instant, not the text, is what is stored: PostgreSQL refuses offsets past ±15:59, and an
    offset may carry a time of year 1 or 9999 out of the range both databases and Python hold.
    Many events of a run share a timestamp: remembering recent answers saves most of the parsing.
    """
    if not _RFC3339.fullmatch(value):
        return None
    try:
        # Python 3.11 reads neither a lowercase "z" nor a lowercase "t" (RFC 3339 allows both).
        parsed = datetime.fromisoformat(value.upper())
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def ts_utc_text(value: str) -> str:
    """The UTC instant of a valid timestamp as RFC 3339 text, for PostgreSQL to store."""
    # A timestamp in UTC as producers write it is its own UTC text: PostgreSQL reads it as the same
    # instant. Not one with more than 6 digits of fraction, which PostgreSQL would round where
    # Python truncates, nor one with a lowercase "t" or "z".
    if value[-1] == "Z" and value[10] == "T" and len(value) <= len("2026-11-20T10:00:00.000000Z"):
        return value
    return _ts_utc_isoformat(value)


@lru_cache(maxsize=8192)
def _ts_utc_isoformat(value: str) -> str:
    return parse_ts(value).isoformat()


_STATES = frozenset(NODE_STATES)


def _bad_str(value: Any) -> bool:
    return type(value) is not str or not value or "\x00" in value


# C0 controls, DEL and C1 controls: a node id names a node on pages, in URLs and in filters.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _bad_node(value: Any) -> bool:
    if type(value) is not str or not 0 < len(value) <= MAX_NODE_ID:
        return True
    # Most ids are ASCII, whose printable characters are exactly those that are not controls: one
    # call in C answers them, where the search costs a regular expression's set-up per id.
    return not value.isprintable() if value.isascii() else _CONTROL.search(value) is not None


_NODE_RULE = f"must be a string of 1 to {MAX_NODE_ID} characters, without control characters"
_ATTEMPT_RULE = f"must be an integer from 0 to {MAX_ATTEMPT}"
_EXIT_CODE_RULE = f"must be an integer from {MIN_EXIT_CODE} to {MAX_EXIT_CODE}"


def _bad_state(value: Any) -> bool:
    # The type first: a list or an object cannot be looked up in a set (TypeError, not a refusal).
    return type(value) is not str or value not in _STATES


def _bad_attempt(value: Any) -> bool:
    # `type(...) is int` refuses booleans, which are ints to isinstance.
    return type(value) is not int or not 0 <= value <= MAX_ATTEMPT


def _bad_exit_code(value: Any) -> bool:
    return type(value) is not int or not MIN_EXIT_CODE <= value <= MAX_EXIT_CODE


def seq_problem(value: Any) -> str | None:
    """Why a producer's `seq` is refused, or None (SPEC section 2: 0 to 2**63 - 1)."""
    if type(value) is not int or not 0 <= value <= MAX_SEQ:
        return f"must be an integer from 0 to {MAX_SEQ}"
    return None


def _check_transition(event: dict, errors: list[FieldError]) -> None:
    if _bad_state(event.get("from")):
        errors.append(FieldError("from", f"must be one of {', '.join(NODE_STATES)}"))
    if _bad_state(event.get("to")):
        errors.append(FieldError("to", f"must be one of {', '.join(NODE_STATES)}"))
    if _bad_attempt(event.get("attempt")):
        errors.append(FieldError("attempt", _ATTEMPT_RULE))


def _check_node_attempt(event: dict, errors: list[FieldError]) -> None:
    if _bad_attempt(event.get("attempt")):
        errors.append(FieldError("attempt", _ATTEMPT_RULE))
    if type(event.get("ok")) is not bool:
        errors.append(FieldError("ok", "must be true or false"))
    duration: Any = event.get("duration_s")
    if type(duration) not in (int, float) or not 0 <= duration <= MAX_DURATION_S:
        # NaN fails the comparison too; orjson reads no infinity.
        errors.append(FieldError("duration_s", f"must be a number of seconds from 0 to {MAX_DURATION_S}"))
    if _bad_exit_code(event.get("exit_code")):
        errors.append(FieldError("exit_code", _EXIT_CODE_RULE))
    if event.get("error") is not None and type(event["error"]) is not str:
        errors.append(FieldError("error", "must be a string when present"))


def _check_run_start(event: dict, errors: list[FieldError]) -> None:
    if _bad_str(event.get("run_id")):
        errors.append(FieldError("run_id", "must be a non-empty string without NUL characters"))
    if "producer" in event and _bad_str(event["producer"]):
        errors.append(FieldError("producer", "must be a non-empty string when present"))
    if event.get("graph") is not None:
        errors.extend(validate_graph(event["graph"], prefix="graph."))


def _check_run_end(event: dict, errors: list[FieldError]) -> None:
    if _bad_exit_code(event.get("exit_code")):
        errors.append(FieldError("exit_code", _EXIT_CODE_RULE))


# Kinds that must name a node; on any other kind a `node` field is optional, but a node id too.
_NODE_EVENTS = frozenset(("transition", "node_attempt"))

_CHECKS = {
    "transition": _check_transition,
    "node_attempt": _check_node_attempt,
    "run_start": _check_run_start,
    "run_end": _check_run_end,
}


def json_too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a parsed JSON value nests more than `limit` levels (the value itself is level 1).

    Walked without recursion, and only into objects and lists: an event of plain fields costs a
    glance at each of its values.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if type(item) is dict else item if type(item) is list else ()
        for child in children:
            if type(child) is dict or type(child) is list:
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


_TOO_DEEP = f"must not nest more than {MAX_JSON_DEPTH} levels of objects and lists"


def validate_graph(graph: Any, prefix: str = "") -> list[FieldError]:
    """``{"version": 1, "nodes": [{"id": "a", "deps": []}, ...]}``; extra fields are kept.

    At most MAX_GRAPH_NODES nodes and MAX_GRAPH_EDGES dependencies: what a run page draws in
    bounded time."""
    if not isinstance(graph, dict):
        return [FieldError(prefix or "graph", "must be an object")]
    nodes = graph.get("nodes")
    if not isinstance(nodes, list):
        return [FieldError(f"{prefix}nodes", "must be a list of nodes")]
    if len(nodes) > MAX_GRAPH_NODES:
        found = f"has {len(nodes)} nodes; a graph has at most {MAX_GRAPH_NODES}"
        return [FieldError(f"{prefix}nodes", found)]
    errors: list[FieldError] = []
    seen: set[str] = set()
    edges = 0
    # Each archive's graph.json and each graph a run_start carries comes through here: the name of
    # a node's place is written out only for a node that is wrong.
    for i, node in enumerate(nodes):
        if not isinstance(node, dict):
            errors.append(FieldError(f"{prefix}nodes[{i}]", "must be an object with an id"))
            continue
        node_id: Any = node.get("id")
        if _bad_node(node_id):
            errors.append(FieldError(f"{prefix}nodes[{i}].id", _NODE_RULE))
        elif node_id in seen:
            errors.append(FieldError(f"{prefix}nodes[{i}].id", f"repeats node {node_id!r}"))
        else:
            seen.add(node_id)
        deps = node.get("deps", [])
        if not isinstance(deps, list) or any(map(_bad_node, deps)):
            errors.append(
                FieldError(f"{prefix}nodes[{i}].deps", f"must be a list of node ids ({_NODE_RULE})")
            )
        else:
            edges += len(deps)
        if len(errors) >= 20:
            break  # enough to say what is wrong; a huge graph could list thousands
    if edges > MAX_GRAPH_EDGES:
        errors.append(
            FieldError(f"{prefix}nodes", f"has {edges} dependencies; a graph has at most {MAX_GRAPH_EDGES}")
        )
    if not errors and json_too_deep(graph):
        errors.append(FieldError(prefix or "graph", _TOO_DEEP))
    return errors


def validate_event(event: Any) -> list[FieldError]:
    """Why ``event`` breaks the event schema (SPEC section 2); an empty list means it is valid.

    Unknown extra fields are allowed, and so are unknown ``event`` kinds (they need ``ts`` only);
    a ``node`` field, on an event of any kind, is a node id. This runs once per imported or posted
    event: it is written for speed.
    """
    if type(event) is not dict:
        return [FieldError("", "an event must be a JSON object")]
    errors: list[FieldError] = []
    ts = event.get("ts")
    if type(ts) is not str or ts_utc(ts) is None:
        errors.append(
            FieldError(
                "ts",
                "must be an RFC 3339 timestamp with Z or an offset up to ±23:59, such as "
                "2026-11-20T10:00:00.000Z, whose UTC time falls in years 1 to 9999",
            )
        )
    kind: Any = event.get("event")
    if _bad_str(kind) or len(kind) > MAX_EVENT_KIND:
        errors.append(
            FieldError(
                "event", f"must be a non-empty string of at most {MAX_EVENT_KIND} characters naming the kind"
            )
        )
        return errors
    if (kind in _NODE_EVENTS or "node" in event) and _bad_node(event.get("node")):
        errors.append(FieldError("node", _NODE_RULE))
    check = _CHECKS.get(kind)
    if check is not None:
        check(event, errors)
    # Only an event with an object or a list among its values can nest too deep; most have none,
    # and asking costs no Python loop.
    if not _CONTAINERS.isdisjoint(map(type, event.values())) and json_too_deep(event):
        errors.append(FieldError("", _TOO_DEEP))
    return errors


_CONTAINERS = frozenset((dict, list))


# ---------------------------------------------------------------- the reduction


@dataclass(slots=True)
class AttemptFacts:
    """One attempt of a node as the reduction saw it begin and end; the timeline lays these out."""

    node: str
    attempt: int
    # The event that began it: its `to: running`, or its record when none came before.
    start_seq: int
    # The event that ended it: its `node_attempt` record, the transition that moved its node on,
    # or run_end. None while it is open.
    end_seq: int | None = None
    recorded: bool = False
    # From its record; when it had none, `ok` says how its node moved on (done, failed), if it did.
    ok: bool | None = None
    duration_s: float | None = None
    exit_code: int | None = None
    error: str | None = None
    # Begun by its record, with no `to: running` before it: it started `duration_s` before.
    unannounced: bool = False


@dataclass(slots=True)
class NodeHistory:
    # (seq, state) each time a transition set the node's state, in seq order.
    changes: list[tuple[int, str]] = field(default_factory=list)
    attempts: list[AttemptFacts] = field(default_factory=list)


# What an attempt that had no record says by where its node moved on to.
_OK_BY_STATE = {"done": True, "failed": False}


class RunHistory:
    """Everything a run's log did, node by node, kept only when a reader asks for it
    (`RunReduction(..., history=True)`): it grows with the log, so a stored state never holds it.
    The reduction says when an attempt begins and ends; this only writes it down."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeHistory] = {}
        self.run_start_seq: int | None = None
        self.run_end_seq: int | None = None
        self._open: dict[str, AttemptFacts] = {}

    def node(self, node: str) -> NodeHistory:
        history = self.nodes.get(node)
        if history is None:
            history = self.nodes[node] = NodeHistory()
        return history

    def transition(self, node: str, seq: int, state: str, attempt: int, moved_on: bool, begins: bool) -> None:
        """Event `seq` set the node's `state`; its open attempt was over (`moved_on`), and attempt
        number `attempt` `begins`."""
        history = self.nodes.get(node) or self.node(node)
        history.changes.append((seq, state))
        if moved_on:
            self.moved_on(node, seq, state)
        if begins:
            facts = self._open[node] = AttemptFacts(node, attempt, seq)
            history.attempts.append(facts)

    def moved_on(self, node: str, seq: int, state: str | None) -> None:
        """The node's open attempt is over: it moved to `state`, or the run ended (None)."""
        facts = self._open.pop(node)
        if not facts.recorded:
            facts.end_seq, facts.ok = seq, _OK_BY_STATE.get(state) if state else None

    def recorded(self, node: str, seq: int, record: dict[str, Any]) -> None:
        """A record belongs to its node's newest attempt of its number that has none yet (the open
        one, unless the record came late); with none, it tells of an attempt nobody announced."""
        number: Any = record.get("attempt")
        attempts = self.node(node).attempts
        for facts in reversed(attempts):
            if facts.attempt == number and not facts.recorded:
                break
        else:
            facts = AttemptFacts(node, number, seq, unannounced=True)
            attempts.append(facts)
        facts.recorded = True
        facts.end_seq = seq
        get = record.get
        facts.ok, facts.duration_s, facts.exit_code, facts.error = (
            get("ok"),
            get("duration_s"),
            get("exit_code"),
            get("error"),
        )

    def ended(self, seq: int) -> None:
        self.run_end_seq = seq
        for node in list(self._open):
            self.moved_on(node, seq, None)


def _earlier(ts: str, than: str) -> bool:
    """Whether one valid timestamp is an earlier instant than another (offsets may differ)."""
    instant, other = ts_utc(ts), ts_utc(than)
    return instant is not None and other is not None and instant < other


class ReductionStateError(ValueError):
    """A stored state this code cannot read: written by another version of the reduction."""


class RunReduction:
    """A run's state, advanced one event at a time in ``seq`` order.

    Order is append order: many events share a ``ts``, so nothing here ever sorts or compares by
    ``ts``; it is read only for ``started``, ``ended`` and ``last_event_ts``, and to note a
    producer's clock that moved back (``ts_went_back``).

    The state (`to_state`, given back to the constructor) is this class's own business: readers
    ask the reduction (`died_mid_attempt`, `node_states`, `row`) rather than read its keys. It
    carries its `version`; a state of another version is refused, never misread.
    """

    STATE_VERSION = 1

    def __init__(self, run_id: str, state: dict[str, Any] | None = None, *, history: bool = False) -> None:
        self.run_id = run_id
        # What the log did, attempt by attempt: for readers that replay a whole log (`replay`).
        self.history: RunHistory | None = RunHistory() if history else None
        self._ignored: list[Diagnostic] = []  # what `replay` finds again, and drops
        state = state or {}
        # States stored before they carried a version have version 1's shape.
        version = state.get("version", 1)
        if version != self.STATE_VERSION:
            raise ReductionStateError(
                f"run {run_id!r}: stored reduction state version {version!r}, "
                f"this code reads version {self.STATE_VERSION}"
            )
        self.next_seq: int = state.get("next_seq", 0)
        # node id -> [state, highest running attempt, named by graph.json]; a list keeps it ordered
        # through a JSON column (jsonb does not keep key order).
        self.nodes: dict[str, list[Any]] = {n[0]: list(n[1:]) for n in state.get("nodes", [])}
        self.has_graph: bool = state.get("has_graph", False)
        # node id -> [attempt, seq of its `to: running`, node_attempt seen] for attempts not yet over
        self.open_attempts: dict[str, list[Any]] = {o[0]: list(o[1:]) for o in state.get("open", [])}
        self.started: str | None = state.get("started")
        self.ended: str | None = state.get("ended")
        self.exit_code: int | None = state.get("exit_code")
        self.last_event_ts: str | None = state.get("last_event_ts")

    # -- state round trip

    def to_state(self) -> dict[str, Any]:
        return {
            "version": self.STATE_VERSION,
            "next_seq": self.next_seq,
            "nodes": [[node, *values] for node, values in self.nodes.items()],
            "has_graph": self.has_graph,
            "open": [[node, *values] for node, values in self.open_attempts.items()],
            "started": self.started,
            "ended": self.ended,
            "exit_code": self.exit_code,
            "last_event_ts": self.last_event_ts,
        }

    @property
    def complete(self) -> bool:
        return self.ended is not None

    # -- feeding

    def set_graph(self, graph: dict[str, Any]) -> list[Diagnostic]:
        """Adopt the DAG (from graph.json, a PUT, or `run_start.graph`); only the first one counts."""
        if self.has_graph:
            return []
        self.has_graph = True
        declared = [node["id"] for node in graph.get("nodes", [])]
        known = set(declared)
        seen_before = {node: values for node, values in self.nodes.items() if not values[2]}
        # Graph order first, then nodes met in events before the graph arrived.
        self.nodes = {node: ["pending", 0, True] for node in declared}
        diagnostics = []
        for node, values in seen_before.items():
            if node in known:
                self.nodes[node] = [values[0], values[1], True]
            else:
                self.nodes[node] = values
                diagnostics.append(self._unknown_node(node, seq=None))
        return diagnostics

    def apply(self, event: dict[str, Any]) -> list[Diagnostic]:
        """Take the next event (already valid by `validate_event`); it becomes ``seq = next_seq``."""
        seq = self.next_seq
        self.next_seq += 1
        kind = event["event"]
        diagnostics: list[Diagnostic] = []
        previous_ts, ts = self.last_event_ts, event["ts"]
        # Noted, never acted on: order is append order whatever the clock said.
        if previous_ts is not None and ts != previous_ts and _earlier(ts, previous_ts):
            diagnostics.append(self._ts_went_back(previous_ts, ts, seq, kind, event.get("node")))
        self.last_event_ts = ts
        if seq == 0 and kind != "run_start":
            diagnostics.append(
                Diagnostic("missing_run_start", f"the first event is {kind!r}, not 'run_start'", seq=seq)
            )
        if self.ended is not None:
            # The row is final at run_end: later events are stored and shown, not reduced.
            diagnostics.append(
                Diagnostic(
                    "events_after_run_end",
                    f"{kind!r} event follows run_end",
                    seq=seq,
                    details={"event": kind},
                )
            )
            return diagnostics
        if kind == "transition":
            self._transition(event["node"], event["from"], event["to"], event["attempt"], seq, diagnostics)
        elif kind == "node_attempt":
            self._record(event["node"], event["attempt"], seq, event, diagnostics)
        elif kind == "run_start":
            self._start(event["ts"], seq)
            if isinstance(event.get("graph"), dict):
                diagnostics.extend(self.set_graph(event["graph"]))
        elif kind == "run_end":
            self._end(event["ts"], event["exit_code"], seq, diagnostics)
        else:
            diagnostics.append(
                Diagnostic(
                    "unknown_event",
                    f"unknown event kind {kind!r} is stored but not reduced",
                    seq=seq,
                    details={"event": kind},
                )
            )
        return diagnostics

    def replay(self, seq: int, ts: Any, kind: str, node: str | None, facts: dict[str, Any]) -> None:
        """A reader's pass over a stored log, for `history`: event `seq` as stored, with the facts
        of its payload the reduction reads, by the same rules as `apply`. Its diagnostics were
        found when it was written, and are not made again.

        An event missing a fact it needs (stored before the validation asked for it) is passed
        over, as an unknown kind is: a read never fails on what is stored.
        """
        self.next_seq = seq + 1
        if self.ended is not None:
            return
        ignored = self._ignored
        if ignored:
            ignored.clear()
        try:
            if kind == "transition" and node:
                self._transition(node, facts["from"], facts["to"], facts["attempt"], seq, ignored)
            elif kind == "node_attempt" and node:
                self._record(node, facts["attempt"], seq, facts, ignored)
            elif kind == "run_start":
                self._start(ts, seq)
            elif kind == "run_end":
                self._end(ts, facts["exit_code"], seq, ignored)
        except KeyError:
            pass

    def _new_node(self, node: str, seq: int, diagnostics: list[Diagnostic]) -> list[Any]:
        """A node first met in an event (callers look it up first: most events name a known one)."""
        values = self.nodes[node] = ["pending", 0, False]
        if self.has_graph:
            diagnostics.append(self._unknown_node(node, seq))
        return values

    def _ts_went_back(self, previous_ts: str, ts: str, seq: int, kind: str, node: Any) -> Diagnostic:
        details: dict[str, Any] = {"ts": ts, "previous_ts": previous_ts, "event": kind}
        if isinstance(node, str):
            details["node"] = node
        return Diagnostic(
            "ts_went_back",
            f"{kind!r} event at {ts} is earlier than the event before it, at {previous_ts}: "
            "the producer's clock moved back",
            seq=seq,
            details=details,
        )

    def _unknown_node(self, node: str, seq: int | None) -> Diagnostic:
        return Diagnostic(
            "unknown_node", f"node {node!r} is not in graph.json", seq=seq, details={"node": node}
        )

    def _attempt_without_record(self, node: str, attempt: int, started_seq: int, seq: int) -> Diagnostic:
        return Diagnostic(
            "attempt_without_record",
            f"attempt {attempt} of {node!r} ended with no node_attempt record",
            seq=started_seq,
            details={"node": node, "attempt": attempt, "moved_on_at_seq": seq},
        )

    # The rules of attempts, for the row, the diagnostics and the history alike: an attempt begins
    # with a transition `to: "running"`, and is over once its node moves on (out of running, or into
    # a new attempt) or the run ends; a record belongs to the open attempt of its number.

    def _start(self, ts: Any, seq: int) -> None:
        if self.started is None:
            self.started = ts
            if self.history is not None:
                self.history.run_start_seq = seq

    def _transition(
        self, node: str, source: str, target: str, attempt: int, seq: int, diagnostics: list[Diagnostic]
    ) -> None:
        values = self.nodes.get(node) or self._new_node(node, seq, diagnostics)
        current = values[0]
        if source != current or (current == "done" and target != "done"):
            reason = (
                f"moves out of 'done' to {target!r}"
                if current == "done"
                else f"says from {source!r} but the node was {current!r}"
            )
            diagnostics.append(
                Diagnostic(
                    "invalid_transition",
                    f"{node!r} {reason}",
                    seq=seq,
                    details={"node": node, "from": source, "to": target, "current": current},
                )
            )
        opened = self.open_attempts.get(node)
        moved_on = False
        if opened is not None and (target != "running" or attempt != opened[0]):
            moved_on = True
            del self.open_attempts[node]
            if not opened[2]:
                diagnostics.append(self._attempt_without_record(node, opened[0], opened[1], seq))
        begins = False
        if target == "running":
            values[1] = max(values[1], attempt)
            if node not in self.open_attempts:
                self.open_attempts[node] = [attempt, seq, False]
                begins = True
        values[0] = target
        if self.history is not None:
            self.history.transition(node, seq, target, attempt, moved_on, begins)

    def _record(
        self, node: str, attempt: int, seq: int, record: dict[str, Any], diagnostics: list[Diagnostic]
    ) -> None:
        if node not in self.nodes:
            self._new_node(node, seq, diagnostics)
        opened = self.open_attempts.get(node)
        if opened is not None and opened[0] == attempt:
            opened[2] = True
        if self.history is not None:
            self.history.recorded(node, seq, record)

    def _end(self, ts: Any, exit_code: int, seq: int, diagnostics: list[Diagnostic]) -> None:
        self.ended = ts
        self.exit_code = exit_code
        # The run ended, so every attempt still open went on without its record.
        for node, (attempt, started_seq, recorded) in self.open_attempts.items():
            if not recorded:
                diagnostics.append(self._attempt_without_record(node, attempt, started_seq, seq))
        self.open_attempts.clear()
        if self.history is not None:
            self.history.ended(seq)

    # -- reading

    def died_mid_attempt(self) -> list[Diagnostic]:
        """Attempts with no node_attempt record still open where the log stops: meaningful once the
        run is known to be over (an attempt that has its record finished, whatever came after)."""
        return [
            Diagnostic(
                "died_mid_attempt",
                f"the log stops during attempt {attempt} of {node!r}",
                seq=started_seq,
                details={"node": node, "attempt": attempt},
            )
            for node, (attempt, started_seq, recorded) in self.open_attempts.items()
            if not recorded
        ]

    def node_states(self) -> list[tuple[str, str, int]]:
        """(node id, final state, attempts) for every node, in graph order then first appearance."""
        return [(node, values[0], values[1]) for node, values in self.nodes.items()]

    def row(self) -> dict[str, Any]:
        """The run row of SPEC section 4, from this reduction alone."""
        states = [values[0] for values in self.nodes.values()]
        node_attempts = {node: values[1] for node, values in self.nodes.items() if values[1] > 0}
        failed_nodes = sorted(node for node, values in self.nodes.items() if values[0] == "failed")
        flake_retries = sum(
            values[1] - 1 for values in self.nodes.values() if values[0] == "done" and values[1] > 0
        )
        duration_s = None
        if self.started is not None and self.ended is not None:
            seconds = (parse_ts(self.ended) - parse_ts(self.started)).total_seconds()
            duration_s = round(seconds, 3)
        outcome = None
        if self.ended is not None:
            if failed_nodes or self.exit_code != 0:
                outcome = "failed"
            elif flake_retries > 0:
                outcome = "clean_with_flake"
            else:
                outcome = "clean"
        return {
            "run_id": self.run_id,
            "started": self.started,
            "ended": self.ended,
            "duration_s": duration_s,
            "outcome": outcome,
            "total_nodes": len(self.nodes),
            "done": states.count("done"),
            "failed": states.count("failed"),
            "blocked": states.count("blocked"),
            "total_attempts": sum(node_attempts.values()),
            "flake_retries": flake_retries,
            "exit_code": self.exit_code,
            "failed_nodes": failed_nodes,
            "node_attempts": node_attempts,
        }


def summary_mismatch(summary: dict[str, Any], row: dict[str, Any]) -> Diagnostic | None:
    """Where the producer's summary.json disagrees with Scope's own reduction, field by field."""
    differing = {}
    for name in SUMMARY_FIELDS:
        if name not in summary:
            continue
        theirs, ours = summary[name], row[name]
        if name in ("started", "ended") and isinstance(theirs, str) and isinstance(ours, str):
            try:
                same = parse_ts(theirs) == parse_ts(ours)
            except ValueError:
                same = False
        elif name == "duration_s" and isinstance(theirs, int | float) and isinstance(ours, int | float):
            same = round(float(theirs), 3) == ours
        else:
            same = theirs == ours
        if not same:
            differing[name] = {"summary": theirs, "reduction": ours}
    if not differing:
        return None
    return Diagnostic(
        "summary_mismatch",
        f"summary.json differs from the reduction in {', '.join(differing)}",
        details={"fields": differing},
    )


def reduce_events(
    run_id: str, events: list[dict[str, Any]], graph: dict[str, Any] | None = None
) -> tuple[RunReduction, list[Diagnostic]]:
    """The whole log at once: what the incremental path must always agree with."""
    reduction = RunReduction(run_id)
    diagnostics = reduction.set_graph(graph) if graph is not None else []
    for event in events:
        diagnostics.extend(reduction.apply(event))
    return reduction, diagnostics
