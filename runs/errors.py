"""What the write path refuses, as plain exceptions: the API edge maps each to its HTTP answer
(ingest.api), and the archive importer to its report. Each carries the contract's `code`, a
sentence for people and `details` for machines."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar


class Refused(Exception):
    """A refusal of the contract's: its `code`, a sentence for people and `details` for machines.
    The write path's refusals below, and a body's (`ingest.services.BatchRefused`), are its kinds."""

    code: ClassVar[str] = "invalid_request"

    def __init__(self, message: str, *, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = dict(details or {})


class RunWriteRefused(Refused):
    """A write the run's state forbids; nothing of it was stored."""


class RunDeletedError(RunWriteRefused):
    """A write to a run that retention has soft-deleted: nothing is appended to a deleted run.

    Appending would bring back a run its tenant's plan no longer keeps, half-visible; the run is
    restored (in the admin) first, or stays deleted. `retention` says when and why it was deleted.
    """

    code = "run_deleted"

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} was deleted by retention", details={"run_id": run_id})
        self.run_id = run_id


class RunConflict(RunWriteRefused):
    """The batch disagrees with what the run already holds."""


class SeqConflict(RunConflict):
    code = "seq_conflict"


class SeqGap(RunConflict):
    code = "seq_gap"


class RunNotStarted(RunConflict):
    code = "run_not_started"


class RunEnded(RunConflict):
    code = "run_ended"


class AlreadyWritten(RunConflict):
    code = "already_written"
