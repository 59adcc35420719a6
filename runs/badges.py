"""Status badges: the result of the latest complete run whose id matches a glob, for a README.

A badge is made on the Badges page and served to anyone who has its URL, so the URL carries a
secret token (`secrets.token_urlsafe`) and only the token's hash is stored. The token holds 256
random bits: a plain SHA-256 is enough, nothing can be guessed from it (API keys are peppered too,
as their secrets reach logs and producers' configuration). The write path (`runs.services`) is the
event log's; badges are this module's.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth.models import User
from django.db.models import F
from django.utils import timezone

from runs.models import Badge, Run
from runs.read_model import verdict_word
from tenants.context import tenant_atomic
from tenants.models import Tenant

# A run id's characters (SPEC section 2) and the glob's two wildcards.
BADGE_PATTERN = re.compile(r"[A-Za-z0-9_*?-]{1,64}")
BADGE_PATTERN_RULE = (
    "1 to 64 characters: letters, digits, '_', '-', and the wildcards * (any run) and ? (one)"
)

# The pages' colours (static/scope.css: --clean, --flaky, --failed, --blocked), as fills under
# white text; the label's is shields' own grey.
LABEL_COLOUR = "#555"
STATUS_COLOURS = {"clean": "#1a7f37", "flaky": "#9a6700", "failed": "#cf222e"}
NO_RUNS = "no runs"
NO_RUNS_COLOUR = "#6e7781"


class BadgeRefused(ValueError):
    """A badge cannot be made as asked; the message says why."""


def badge_token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def badge_create(*, tenant: Tenant, pattern: str, created_by: User | None = None) -> tuple[Badge, str]:
    """A new badge for runs matching `pattern`, and its URL's token: returned here once, never stored."""
    if not BADGE_PATTERN.fullmatch(pattern):
        raise BadgeRefused(f"{pattern!r} is not a run id pattern: use {BADGE_PATTERN_RULE}")
    token = secrets.token_urlsafe(32)
    with tenant_atomic(tenant):
        badge = Badge.objects.create(
            tenant=tenant, pattern=pattern, token_hash=badge_token_hash(token), created_by=created_by
        )
    return badge, token


def badge_revoke(*, badge: Badge) -> None:
    if badge.revoked_at is None:
        badge.revoked_at = timezone.now()
        badge.save(update_fields=["revoked_at"])


def badge_list(*, tenant: Tenant) -> list[Badge]:
    return list(Badge.objects.filter(tenant=tenant).select_related("created_by"))


def badge_get(*, tenant: Tenant, badge_id: int) -> Badge | None:
    return Badge.objects.filter(tenant=tenant, pk=badge_id).first()


def badge_find(token: str) -> Badge | None:
    """The badge this URL token makes, unless it was revoked; None for any token that makes none."""
    if not 1 <= len(token) <= 100:
        return None
    badge = Badge.objects.pre_tenant_by_hash(badge_token_hash(token))
    return badge if badge is not None and badge.revoked_at is None else None


def glob_regex(pattern: str) -> str:
    """The glob as a regular expression both databases read alike: a run id's characters are never
    special outside a bracket, so only the wildcards change."""
    return "^" + pattern.replace("*", ".*").replace("?", ".") + "$"


@dataclass(frozen=True, slots=True)
class BadgeStatus:
    label: str
    message: str
    colour: str
    run_id: str | None = None
    started: datetime | None = None


def badge_status(badge: Badge) -> BadgeStatus:
    """The result of the badge's tenant's latest complete run whose id matches its pattern, newest
    as the history orders runs; "no runs" while none has completed."""
    with tenant_atomic(badge.tenant):
        latest = (
            Run.objects.filter(tenant=badge.tenant, complete=True, run_id__regex=glob_regex(badge.pattern))
            .order_by(F("started").desc(nulls_last=True), F("id").desc())
            .values_list("run_id", "started", "outcome")
            .first()
        )
    if latest is None:
        return BadgeStatus(badge.pattern, NO_RUNS, NO_RUNS_COLOUR)
    run_id, started, outcome = latest
    word = verdict_word("complete", outcome) or NO_RUNS
    return BadgeStatus(badge.pattern, word, STATUS_COLOURS.get(word, NO_RUNS_COLOUR), run_id, started)


def text_width(text: str) -> int:
    """Roughly the width of `text` in 11px Verdana, which shields' badges use; the SVG's
    `textLength` makes the text fill exactly this width in any font."""
    narrow, wide = set("ijlt.,:;!|' "), set("mwMW@%")
    return round(sum(4 if c in narrow else 10 if c in wide else 7 for c in text))
