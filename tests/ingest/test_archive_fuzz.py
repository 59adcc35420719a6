"""An archive fuzz (SPEC section 2, Bounds): random hostile lines in one run between two good runs.

The good runs are imported whole, the command succeeds, the hostile run's good lines are its events
(in order, as written) and each bad line is a `malformed_line` diagnostic naming its line; a second
import changes nothing. Lines are good or bad by construction, from the SPEC's schema and bounds,
never by asking the validation.
"""

import json
import string
import tempfile
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path

import orjson
import pytest
from django.core.management import call_command
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runs.models import Diagnostic, Event, Run
from tests.conftest import write_archive_run

pytestmark = pytest.mark.django_db

STATES = ("pending", "running", "done", "failed", "blocked")
MAX_LINE = 4096

# ---------------------------------------------------------------- good lines: inside every bound


def _ts(instant: datetime, offset_minutes: int, digits: int) -> str:
    local = instant + timedelta(minutes=offset_minutes)
    text = local.replace(tzinfo=None).isoformat(timespec="microseconds")[: 20 + digits].rstrip(".")
    if offset_minutes == 0:
        return text + "Z"
    sign = "+" if offset_minutes > 0 else "-"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return f"{text}{sign}{hours:02d}:{minutes:02d}"


# The UTC instant in years 1 to 9999, with or without an offset up to the SPEC's 23:59 (the write
# path stores the UTC instant, so offsets PostgreSQL could not parse are stored too).
MAX_OFFSET_MINUTES = 23 * 60 + 59
good_ts = st.builds(
    _ts,
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)),
    st.one_of(st.just(0), st.integers(-MAX_OFFSET_MINUTES, MAX_OFFSET_MINUTES)),
    st.sampled_from([3, 0, 6]),
)
# Node ids: 1 to 200 characters, no control character, non-BMP ones included.
good_node = st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=200)
good_attempt = st.integers(0, 2**31 - 1)
good_exit_code = st.integers(-(2**31), 2**31 - 1)
# Numbers PostgreSQL's jsonb gives back as they were written.
plain_numbers = st.one_of(st.integers(-(2**53), 2**53), st.integers(-(10**6), 10**6).map(lambda n: n / 8))
# Unknown extra fields: any JSON without NUL (which no database text holds), nested, controls and all.
json_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=30)
extra_values = st.recursive(
    st.one_of(st.none(), st.booleans(), plain_numbers, json_text),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(json_text, inner, max_size=4)),
    max_leaves=12,
)
extra_fields = st.dictionaries(
    json_text.filter(lambda key: key not in ("ts", "event", "node", "run_id", "graph", "producer")),
    extra_values,
    max_size=3,
)
unknown_kind = st.text(string.ascii_letters + "_", min_size=1, max_size=64).filter(
    lambda kind: kind not in ("run_start", "transition", "node_attempt", "run_end")
)


def _event(ts: str, kind: str, fields: dict, extra: dict) -> dict:
    return {**extra, **fields, "ts": ts, "event": kind}


good_events = st.one_of(
    st.builds(
        _event,
        good_ts,
        st.just("transition"),
        st.fixed_dictionaries(
            {
                "node": good_node,
                "from": st.sampled_from(STATES),
                "to": st.sampled_from(STATES),
                "attempt": good_attempt,
            }
        ),
        extra_fields,
    ),
    st.builds(
        _event,
        good_ts,
        st.just("node_attempt"),
        st.fixed_dictionaries(
            {
                "node": good_node,
                "attempt": good_attempt,
                "ok": st.booleans(),
                "duration_s": st.one_of(
                    st.integers(0, 10**9), st.integers(0, 8 * 10**6).map(lambda n: n / 8)
                ),
                "exit_code": good_exit_code,
            }
        ),
        extra_fields,
    ),
    st.builds(
        _event,
        good_ts,
        st.just("run_end"),
        st.fixed_dictionaries({"exit_code": good_exit_code}),
        extra_fields,
    ),
    st.builds(_event, good_ts, unknown_kind, st.just({}), extra_fields),
    st.builds(_event, good_ts, unknown_kind, st.fixed_dictionaries({"node": good_node}), extra_fields),
)


def _encoded(event: dict, ascii_only: bool) -> bytes:
    return json.dumps(event, ensure_ascii=ascii_only, separators=(",", ":")).encode()


good_lines = st.builds(_encoded, good_events, st.booleans()).filter(lambda line: len(line) <= MAX_LINE)

# ---------------------------------------------------------------- bad lines: each breaks the schema


def _broken(event: dict, field: str, value: object) -> dict:
    return {**event, field: value}


transition = {"ts": "2026-11-20T10:00:00.000Z", "event": "transition", "node": "n", "from": "pending"}
transition = {**transition, "to": "running", "attempt": 1}
node_attempt = {"ts": "2026-11-20T10:00:00.000Z", "event": "node_attempt", "node": "n", "attempt": 1}
node_attempt = {**node_attempt, "ok": True, "duration_s": 1.0, "exit_code": 0}
not_an_int = st.one_of(
    st.text(max_size=5),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: f != int(f)),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)

bad_events = st.one_of(
    # Not a JSON object.
    st.one_of(
        st.lists(st.integers(), max_size=3), st.integers(), st.text(max_size=20), st.none(), st.booleans()
    ),
    # A timestamp that is not RFC 3339 with a zone, or a date that does not exist.
    st.builds(
        _broken,
        st.just(transition),
        st.just("ts"),
        st.one_of(
            st.sampled_from(
                [
                    "2026-11-20T10:00:00.000",
                    "2026-13-01T00:00:00.000Z",
                    "2026-02-30T10:00:00Z",
                    "yesterday",
                    "",
                    "2026-11-20",
                ]
            ),
            st.integers(),
            st.none(),
        ),
    ),
    st.builds(lambda e: {k: v for k, v in e.items() if k != "ts"}, st.just(node_attempt)),
    # The kind missing, empty, not a string, or longer than 64 characters.
    st.builds(
        _broken,
        st.just(transition),
        st.just("event"),
        st.one_of(
            st.just(""), st.integers(), st.none(), st.text(string.ascii_letters, min_size=65, max_size=80)
        ),
    ),
    # Fields of known kinds with the wrong type or outside their range.
    st.builds(
        _broken, st.just(transition), st.just("attempt"), st.one_of(not_an_int, st.integers(max_value=-1))
    ),
    st.builds(
        _broken,
        st.just(transition),
        st.sampled_from(["from", "to"]),
        st.one_of(st.text(max_size=8).filter(lambda s: s not in STATES), st.integers()),
    ),
    st.builds(
        _broken,
        st.sampled_from([transition, node_attempt]),
        st.just("node"),
        st.one_of(
            st.just(""),
            st.text(min_size=201, max_size=230),
            st.just("a\x00b"),
            st.integers(),
            st.lists(st.text(max_size=3), max_size=2),
        ),
    ),
    st.builds(
        _broken,
        st.just(node_attempt),
        st.just("ok"),
        st.one_of(st.integers(), st.text(max_size=4), st.none()),
    ),
    st.builds(
        _broken,
        st.just(node_attempt),
        st.just("duration_s"),
        st.one_of(st.text(max_size=4), st.none(), st.integers(max_value=-1)),
    ),
    st.builds(
        _broken,
        st.sampled_from([node_attempt, {"ts": "2026-11-20T10:00:00.000Z", "event": "run_end"}]),
        st.just("exit_code"),
        not_an_int,
    ),
    st.builds(
        _broken,
        st.just({"ts": "2026-11-20T10:00:00.000Z", "event": "run_start"}),
        st.just("run_id"),
        st.one_of(st.just(""), st.integers(), st.none()),
    ),
    # A NUL anywhere, even in an unknown field: no database text holds it.
    st.builds(
        _broken,
        st.just(transition),
        json_text.filter(lambda k: k not in transition),
        st.just("before\x00after"),
    ),
)
bad_lines = st.one_of(
    st.builds(_encoded, bad_events, st.booleans()),
    # Not JSON at all: random bytes, broken UTF-8, NUL bytes (a newline would end the line).
    st.binary(min_size=0, max_size=80)
    .map(lambda raw: raw.replace(b"\n", b" "))
    .filter(lambda raw: not _json_object(raw)),
    # An event with a raw byte spliced in that JSON text cannot hold: a NUL, a control, broken UTF-8.
    st.builds(
        lambda event, byte, at: (line := _encoded(event, True))[:at] + byte + line[at:],
        st.sampled_from([transition, node_attempt]),
        st.sampled_from([b"\x00", b"\x01", b"\x1b", b"\xff", b"\xc3", b"\xed\xa0\x80"]),
        st.integers(0, 120),
    ),
    # Longer than one atomic append: refused whatever it holds.
    st.builds(
        lambda pad: _encoded({**transition, "pad": "x" * pad}, True), st.integers(MAX_LINE, MAX_LINE + 200)
    ),
)


def _json_object(raw: bytes) -> bool:
    try:
        return isinstance(orjson.loads(raw), dict)
    except orjson.JSONDecodeError:
        return False


# ---------------------------------------------------------------- the property


def good_run(run_id: str) -> list[dict]:
    ts = "2026-11-20T10:00:00.000Z"
    return [
        {"ts": ts, "event": "run_start", "run_id": run_id},
        {"ts": ts, "event": "transition", "node": "a", "from": "pending", "to": "running", "attempt": 1},
        {
            "ts": ts,
            "event": "node_attempt",
            "node": "a",
            "attempt": 1,
            "ok": True,
            "duration_s": 1.5,
            "exit_code": 0,
        },
        {"ts": ts, "event": "transition", "node": "a", "from": "running", "to": "done", "attempt": 1},
        {"ts": ts, "event": "run_end", "exit_code": 0},
    ]


def ingest(root: Path) -> str:
    out = StringIO()
    call_command("ingest_archive", str(root), stdout=out, stderr=StringIO())
    return out.getvalue()


def stored_state() -> list:
    runs = list(
        Run.objects.order_by("run_id").values_list(
            "run_id", "next_seq", "log_offset", "log_lines", "errors", "warnings", "infos", "import_error"
        )
    )
    return [runs, Event.objects.count(), Diagnostic.objects.count()]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    lines=st.lists(
        st.one_of(st.tuples(st.just(True), good_lines), st.tuples(st.just(False), bad_lines)),
        min_size=1,
        max_size=25,
    )
)
def test_hostile_lines_cost_their_own_lines_only(local_tenant, lines):
    with tempfile.TemporaryDirectory() as folder, transaction.atomic():
        root = Path(folder)
        write_archive_run(root, "run_a_good", good_run("run_a_good"))
        write_archive_run(root, "run_z_good", good_run("run_z_good"))
        start = json.dumps({"ts": "2026-11-20T10:00:00.000Z", "event": "run_start", "run_id": "run_hostile"})
        log = [start.encode(), *(line for _good, line in lines)]
        (root / "runs" / "run_hostile").mkdir()
        (root / "runs" / "run_hostile" / "transitions.jsonl").write_bytes(
            b"".join(line + b"\n" for line in log)
        )

        out = ingest(root)

        for run_id in ("run_a_good", "run_z_good"):
            run = Run.objects.get(run_id=run_id)
            assert [e.payload for e in Event.objects.filter(run=run).order_by("seq")] == good_run(run_id)
            assert (run.outcome, run.errors, run.import_error) == ("clean", 0, "")
        hostile = Run.objects.get(run_id="run_hostile")
        assert hostile.import_error == "", hostile.import_error
        expected = [json.loads(start)] + [json.loads(line) for good, line in lines if good]
        assert [e.payload for e in Event.objects.filter(run=hostile).order_by("seq")] == expected
        bad_numbers = [number for number, (good, _line) in enumerate(lines, start=2) if not good]
        malformed = Diagnostic.objects.filter(run=hostile, code="malformed_line").order_by("line")
        assert [d.line for d in malformed] == bad_numbers
        assert "could not import" not in out

        before = stored_state()
        assert "nothing new" in ingest(root)
        assert stored_state() == before
        transaction.set_rollback(True)
