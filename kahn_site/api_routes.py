"""API routes that answer with or without a trailing slash, to the same view.

The contract spells `runs/` and `runs/{run_id}/` with a slash and `runs/{run_id}/events`, `graph` and
`summary` without, and people type either. A redirect to the canonical spelling would do for a GET,
but clients do not repeat a POST or PUT body across a redirect (and Django's APPEND_SLASH refuses to
try): so both spellings route to the one view, and only the canonical one is in the OpenAPI schema.
"""

from __future__ import annotations

from typing import Any

from django.urls import URLPattern, path

# Set on the view function of the other spelling, so that the schema leaves it out.
OTHER_SPELLING_OF = "kahn_other_spelling_of"


def api_path(route: str, view_class: Any, name: str) -> list[URLPattern]:
    """`route` (the canonical spelling) and the same route with the trailing slash added or removed."""
    other = route.removesuffix("/") if route.endswith("/") else f"{route}/"
    other_view = view_class.as_view()
    setattr(other_view, OTHER_SPELLING_OF, route)
    return [path(route, view_class.as_view(), name=name), path(other, other_view)]


def schema_without_other_spellings(endpoints: list[tuple[Any, ...]], **kwargs: Any) -> list[tuple[Any, ...]]:
    """drf-spectacular's preprocessing hook: one path per endpoint in the schema, the canonical one."""
    return [endpoint for endpoint in endpoints if not hasattr(endpoint[-1], OTHER_SPELLING_OF)]
