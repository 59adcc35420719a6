"""Template tags of the pages: durations, timestamps, diagnostic counts, and query-string links."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from django import template
from django.utils.html import format_html_join
from django.utils.safestring import mark_safe

from runs.pictures import seconds_label

register = template.Library()

SEVERITY_WORDS = (("error", "error", "errors"), ("warning", "warning", "warnings"), ("info", "info", "infos"))


@register.filter
def seconds(value: float | None) -> str:
    return "" if value is None else seconds_label(float(value))


@register.filter
def iso(value: datetime | None) -> str:
    """RFC 3339 UTC with milliseconds, as the producer wrote it."""
    if value is None:
        return ""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@register.filter
def clock(value: datetime | None) -> str:
    """Time of day with milliseconds: events of one run are seconds apart, often the same second."""
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%H:%M:%S.") + f"{value.microsecond // 1000:03d}"


@register.filter
def percent(value: float) -> str:
    return f"{value * 100:.0f}%"


@register.simple_tag
def diagnostic_counts(counts: dict[str, int], link: str = "") -> str:
    """Counts by severity, most severe first; each a link to `link` (the list) when given."""
    parts = [
        (severity, counts[severity], one if counts[severity] == 1 else many)
        for severity, one, many in SEVERITY_WORDS
        if counts.get(severity)
    ]
    if not parts:
        return mark_safe('<span class="muted">none</span>')
    if link:
        linked = [(severity, link, count, word) for severity, count, word in parts]
        return format_html_join(" ", '<a class="sev sev-{}" href="{}">{} {}</a>', linked)
    return format_html_join(" ", '<span class="sev sev-{}">{} {}</span>', parts)


@register.simple_tag(takes_context=True)
def query_with(context: dict[str, Any], **changes: Any) -> str:
    """The current query string with some parameters replaced; a value of None or "" drops one."""
    query = context["request"].GET.copy()
    for name, value in changes.items():
        query.pop(name, None)
        if value not in (None, ""):
            query[name] = value
    return query.urlencode()


@register.filter
def json_attr(value: Any) -> str:
    """JSON for a data attribute (the template escapes it); read back by static/replay.js."""
    return json.dumps(value, separators=(",", ":"), default=str)


@register.filter
def page_start(seq: int | None, size: int) -> int:
    """The first seq of the event-log page that shows `seq`."""
    return 0 if seq is None else seq - seq % size


@register.filter
def attempts_text(count: int) -> str:
    return "not run" if count == 0 else "1 attempt" if count == 1 else f"{count} attempts"


# Differences are signed as in print, where a hyphen is too short to read as minus.
MINUS = "\N{MINUS SIGN}"


@register.simple_tag
def count_delta(a: int, b: int) -> str:
    """b minus a with its sign: +2, 0, or MINUS 1."""
    difference = b - a
    return f"+{difference}" if difference > 0 else f"{MINUS}{-difference}" if difference < 0 else "0"


@register.simple_tag
def seconds_delta(a: float, b: float) -> str:
    """b minus a as a duration with its sign: +1m 20.0s, 0s, or MINUS 4.5s."""
    difference = round(b - a, 3)
    if difference == 0:
        return "0s"
    return ("+" if difference > 0 else MINUS) + seconds_label(abs(difference))
