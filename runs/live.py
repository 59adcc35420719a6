"""What a committed write means to live sockets (SPEC section 7): a run's new events for the run's
subscribers, and its new row for the tenant's history subscribers.

`live_publish_changes` is the write path's hook (the services of `runs.services`), called after
commit for the ingest API and the archive importer alike. It only notes what changed; the
publisher (`kahn_site.live_fanout`) builds a message only for groups somebody listens to.

Group names are made here, from the tenant's primary key and a run id the caller already checked:
never from anything a client sends.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

import orjson
from django.utils import timezone

from kahn_site.live_fanout import live_publisher
from runs.models import Run
from runs.read_model import run_row_data
from runs.selectors import run_rows

if TYPE_CHECKING:
    from runs.services import RunChange

# A batch larger than this goes out as a notice (`events` null): subscribers read it from the
# database in pages, rather than every replica's Redis and socket carrying one huge frame.
LIVE_EVENTS_PER_MESSAGE = 500


def live_run_group(tenant_id: int, run_id: str) -> str:
    return f"kahn.t{tenant_id}.run.{run_id}"


def live_runs_group(tenant_id: int) -> str:
    return f"kahn.t{tenant_id}.runs"


def event_text(payload: str | dict[str, Any], seq: int) -> str:
    """An event as the API shows it: the producer's object with its `seq` (which wins over any
    `seq` a producer's line carried)."""
    event = orjson.loads(payload) if isinstance(payload, str) else payload
    try:
        return orjson.dumps({**event, "seq": seq}).decode()
    except orjson.JSONEncodeError:
        # An integer past 64 bits in an unknown field (see kahn_site.api_renderers).
        return json.dumps({**event, "seq": seq}, separators=(",", ":"))


@dataclass(frozen=True)
class RunEvents:
    """Events `first_seq` .. `next_seq - 1` of one run, committed; `payloads` their stored JSON text,
    or None when there were too many to carry (subscribers then read them from the database)."""

    group: str
    run_id: str
    first_seq: int
    next_seq: int
    payloads: tuple[str, ...] | None
    coalesce: ClassVar[bool] = True

    def merged_with(self, newer: RunEvents) -> RunEvents:
        # Writers' after-commit hooks may run out of order (two threads, one run): sort first.
        early, late = sorted((self, newer), key=lambda events: events.first_seq)
        payloads = None
        if (
            early.payloads is not None
            and late.payloads is not None
            and late.first_seq == early.next_seq
            and len(early.payloads) + len(late.payloads) <= LIVE_EVENTS_PER_MESSAGE
        ):
            payloads = early.payloads + late.payloads
        # Not contiguous (a batch still on its way) or too long: a notice of the whole span.
        return RunEvents(
            group=self.group,
            run_id=self.run_id,
            first_seq=early.first_seq,
            next_seq=max(early.next_seq, late.next_seq),
            payloads=payloads,
        )

    def message(self) -> dict[str, Any]:
        events = None
        if self.payloads is not None:
            events = [event_text(payload, self.first_seq + i) for i, payload in enumerate(self.payloads)]
        return {
            "type": "live.events",
            "run_id": self.run_id,
            "first_seq": self.first_seq,
            "next_seq": self.next_seq,
            "events": events,
        }


def row_version(run: Run) -> list[float]:
    """Orders the rows of one run as they were committed: more events, then a later write."""
    return [run.next_seq, run.updated_at.timestamp()]


def run_row_json(run: Run, now: datetime | None = None) -> str:
    """The run's history row as the read API lists it, as JSON text, from the run as the write
    path stored it (it carries its reduction state: no query)."""
    (row,) = run_rows([run], tenant=None, now=now or timezone.now())
    return orjson.dumps(run_row_data(row)).decode()


@dataclass(frozen=True)
class RunRows:
    """The newest committed row of each run that changed, for the tenant's `runs: "*"` subscribers.

    The Run objects are the write path's, as stored; nothing changes them after commit.
    """

    group: str
    runs: dict[str, Run]
    coalesce: ClassVar[bool] = True

    def merged_with(self, newer: RunRows) -> RunRows:
        runs = dict(self.runs)
        for run_id, run in newer.runs.items():
            known = runs.get(run_id)
            if known is None or row_version(run) >= row_version(known):
                runs[run_id] = run
        return RunRows(group=self.group, runs=runs)

    def message(self) -> dict[str, Any]:
        now = timezone.now()
        rows = [
            {"run_id": run_id, "version": row_version(run), "row": run_row_json(run, now)}
            for run_id, run in self.runs.items()
        ]
        return {"type": "live.runs", "rows": rows}


def live_publish_changes(changes: list[RunChange]) -> None:
    """After commit: hands what the batch changed to the publisher. Cheap when nobody can listen."""
    if not live_publisher.active():
        return
    items: list[Any] = []
    rows: dict[int, dict[str, Run]] = {}
    for change in changes:
        if not change.news:
            continue
        run = change.run
        if change.appended:
            payloads = change.live_payloads
            items.append(
                RunEvents(
                    group=live_run_group(run.tenant_id, run.run_id),
                    run_id=run.run_id,
                    first_seq=run.next_seq - change.appended,
                    next_seq=run.next_seq,
                    payloads=tuple(payloads) if payloads is not None else None,
                )
            )
        rows.setdefault(run.tenant_id, {})[run.run_id] = run
    items.extend(RunRows(group=live_runs_group(tenant_id), runs=runs) for tenant_id, runs in rows.items())
    live_publisher.submit(items)
