"""A nudge for this process's delivery loop (OSS `serve`): a notification was just committed, so
the loop looks now instead of at its next tick. Without a loop in the process, nothing waits on it."""

from __future__ import annotations

import threading

_due = threading.Event()


def delivery_wake() -> None:
    _due.set()


def delivery_wait(timeout: float) -> None:
    """Until woken or `timeout` seconds have passed."""
    _due.wait(timeout)
    _due.clear()
