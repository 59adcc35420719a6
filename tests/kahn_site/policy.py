"""The Content Security Policy every answer carries, read from its header (the directives' order is
not fixed)."""

from __future__ import annotations

SELF, NONE = "'self'", "'none'"

# Scripts and styles from the site's own files only: nothing inline, nothing evaluated.
EXPECTED_POLICY = {
    "default-src": [SELF],
    "script-src": [SELF],
    "style-src": [SELF],
    "img-src": [SELF, "data:"],
    "connect-src": [SELF],
    "object-src": [NONE],
    "base-uri": [NONE],
    "form-action": [SELF],
    "frame-ancestors": [NONE],
}


def policy_directives(header: str) -> dict[str, list[str]]:
    directives = {}
    for directive in filter(None, (part.strip() for part in header.split(";"))):
        name, *sources = directive.split()
        assert name not in directives, f"{name} twice in {header!r}"
        directives[name] = sources
    return directives
