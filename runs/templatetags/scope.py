"""Template tags of the pages: durations, times, diagnostic counts, and query-string links."""

from __future__ import annotations

import functools
import json
import re
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django import template
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from runs.pictures import run_duration_label, seconds_label

register = template.Library()

SEVERITY_WORDS = (("error", "error", "errors"), ("warning", "warning", "warnings"), ("info", "info", "infos"))


@register.filter
def seconds(value: float | None) -> str:
    return "" if value is None else seconds_label(float(value))


@register.simple_tag
def run_duration(run: Any) -> str:
    """A run's length, `≥` while it has no `run_end` (runs.pictures.run_duration_label); a dash
    before it started."""
    label = run_duration_label(run)
    if not label:
        return mark_safe('<span class="muted">—</span>')
    if run.duration_s is None:
        return format_html(
            '<span title="No run_end yet: the time from its start to its last event">{}</span>', label
        )
    return label


@register.filter
def iso(value: datetime | None) -> str:
    """RFC 3339 UTC with milliseconds, as the producer wrote it."""
    if value is None:
        return ""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Times: every page shows them in UTC, or, once the reader asks for local time (the toggle in the
# page header, static/time_zone.js), in the browser's time zone, whose IANA name the cookie holds.
TIME_ZONE_COOKIE = "kahn_time_zone"
# IANA names are letters, digits and `/_+-` (Europe/Paris, America/Port-au-Prince, Etc/GMT+5).
ZONE_NAME = re.compile(r"[A-Za-z0-9/_+-]{1,64}")
# How `{% when %}` writes a time, by the detail its place needs; the year is added when it is not
# the current one, and `<time datetime>` and the title always carry the full instant.
WHEN_STYLES = {
    "second": "{date}, {time:%H:%M:%S} {zone}",
    "minute": "{date}, {time:%H:%M} {zone}",
    # The event log: a run's events are seconds apart, often in the same second; its column head
    # names the zone.
    "clock": "{time:%H:%M:%S}.{milliseconds:03d}",
    # An axis label in an SVG picture (plain text); the picture's caption names the zone.
    "axis": "{date}, {time:%H:%M}",
}


@functools.lru_cache(maxsize=64)
def _zone(name: str) -> tzinfo | None:
    if not ZONE_NAME.fullmatch(name):
        return None
    try:
        return ZoneInfo(name)
    except (ValueError, OSError, ZoneInfoNotFoundError):  # a path, a folder, or no such zone here
        return None


def display_zone(request: HttpRequest | None) -> tuple[tzinfo, str | None]:
    """The zone times are shown in, and its IANA name when it is the reader's (None: UTC)."""
    name = request.COOKIES.get(TIME_ZONE_COOKIE, "") if request is not None else ""
    zone = _zone(name) if name else None
    return (UTC, None) if zone is None else (zone, name)


def zone_label(value: datetime, zone: tzinfo) -> str:
    """UTC, a zone's abbreviation where it has one (CET, EDT), else its offset (UTC+5:30)."""
    if zone is UTC:
        return "UTC"
    local = value.astimezone(zone)
    abbreviation = local.tzname() or ""
    if abbreviation.isalpha():
        return abbreviation
    offset = local.utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset is not None else 0
    sign, minutes = ("+" if minutes >= 0 else "-"), abs(minutes)
    hours, minutes = divmod(minutes, 60)
    return f"UTC{sign}{hours}" + (f":{minutes:02d}" if minutes else "")


def time_label(value: datetime, zone: tzinfo, style: str = "second", now: datetime | None = None) -> str:
    """A time as the pages write it: `Dec 7, 14:03:11 UTC`; `Dec 7, 2025, 14:03:11 UTC` in another year."""
    local = value.astimezone(zone)
    this_year = (now or timezone.now()).astimezone(zone).year
    date = f"{local:%b} {local.day}" + ("" if local.year == this_year else f", {local.year}")
    return WHEN_STYLES[style].format(
        date=date, time=local, zone=zone_label(value, zone), milliseconds=local.microsecond // 1000
    )


def utc_title(value: datetime) -> str:
    """The full instant in UTC, for a time's tooltip: `2026-12-07 14:03:11.123 UTC`."""
    utc = value.astimezone(UTC)
    return f"{utc:%Y-%m-%d %H:%M:%S}.{utc.microsecond // 1000:03d} UTC"


@register.simple_tag(takes_context=True)
def when(context: dict[str, Any], value: datetime | None, style: str = "second") -> str:
    """A time, in the reader's zone and labelled with it: the one way every page writes a time.

    A `<time>` element whose `datetime` and title give the instant in UTC; plain text for the
    `axis` style, which goes inside an SVG `<text>`."""
    if value is None:
        return ""
    zone, _name = display_zone(context.get("request"))
    label = time_label(value, zone, style)
    if style == "axis":
        return label
    return format_html('<time datetime="{}" title="{}">{}</time>', iso(value), utc_title(value), label)


@register.simple_tag(takes_context=True)
def time_zone_name(context: dict[str, Any]) -> str:
    """The zone the page's times are in, for a column head or a caption: `UTC`, `Europe/Paris`."""
    _zone, name = display_zone(context.get("request"))
    return name or "UTC"


@register.simple_tag(takes_context=True)
def time_zone_toggle(context: dict[str, Any]) -> SafeString:
    """The header's local-time toggle; hidden until static/time_zone.js, which sets the cookie, runs."""
    _zone, name = display_zone(context.get("request"))
    if name is None:
        title = "Times are in UTC: show them in this browser's time zone"
    else:
        title = f"Times are in {name}: show them in UTC"
    return format_html(
        '<button type="button" class="time-toggle" id="time-toggle" aria-pressed="{}" data-cookie="{}"'
        ' data-zone="{}" title="{}" hidden>Local time</button>',
        "false" if name is None else "true",
        TIME_ZONE_COOKIE,
        name or "",
        title,
    )


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
