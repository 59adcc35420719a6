"""Cursor pagination of run history, newest first, for the read API and the history page.

DRF's `CursorPagination` keys a page on one field and breaks ties with an offset; `started` is
nullable (a run whose `run_start` has not arrived) and shared by runs started in the same
millisecond, so the position here is the pair (`started`, `id`), and each page is one keyset query
(`runs.selectors.run_list_page`). Cursors stay opaque and DRF-encoded; links, `page_size` and the
schema come from DRF.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from django.db.models import QuerySet
from rest_framework.exceptions import NotFound
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.request import Request

from kahn_site.api_errors import InvalidQuery
from runs.models import Run
from runs.selectors import RunPosition, run_list_page

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


class RunCursorPagination(CursorPagination):
    page_size = DEFAULT_PAGE_SIZE
    page_size_query_param = "page_size"
    max_page_size = MAX_PAGE_SIZE
    ordering = ("-started", "-id")
    template = None

    # Pages runs only: run_list_page's keyset query is theirs.
    def paginate_queryset(  # type: ignore[override]
        self, queryset: QuerySet[Run], request: Request, view: Any = None
    ) -> list[Run]:
        self.request = request
        self.base_url = request.build_absolute_uri()
        # Never None: without a valid page_size parameter, DRF answers the class's page_size.
        self.page_size = cast(int, self.get_page_size(request))
        self.cursor = self.decode_cursor(request)
        backwards = bool(self.cursor and self.cursor.reverse)
        # DRF's cursors carry their position as text (its stubs say int); decode_cursor checked it.
        position = self._decode_position(cast(str, self.cursor.position)) if self.cursor else None
        rows = run_list_page(queryset, position=position, backwards=backwards, limit=self.page_size + 1)
        more = len(rows) > self.page_size
        self.page = rows[: self.page_size]
        if backwards:
            self.page.reverse()
            self.has_next, self.has_previous = position is not None, more
        else:
            self.has_next, self.has_previous = more, position is not None
        # An empty page past either end still links back to where it came from.
        self.previous_position = self.next_position = cast(str, self.cursor.position) if self.cursor else None
        return self.page

    def decode_cursor(self, request: Request) -> Cursor | None:
        if not request.query_params.get(self.cursor_query_param):
            return None
        try:
            cursor = super().decode_cursor(request)
        except NotFound as exc:
            raise self._invalid() from exc
        if cursor is None or cursor.position is None or cursor.offset:
            raise self._invalid()
        return cursor

    def get_next_link(self) -> str | None:
        if not self.has_next:
            return None
        position = self._position(self.page[-1]) if self.page else self.next_position
        # A text position, as DRF's own cursors carry (its stubs say int).
        return self.encode_cursor(Cursor(offset=0, reverse=False, position=position))  # type: ignore[arg-type]

    def get_previous_link(self) -> str | None:
        if not self.has_previous:
            return None
        position = self._position(self.page[0]) if self.page else self.previous_position
        # A text position, as DRF's own cursors carry (its stubs say int).
        return self.encode_cursor(Cursor(offset=0, reverse=True, position=position))  # type: ignore[arg-type]

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"] = {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE}
                parameter["description"] = (
                    f"Runs per page, 1 to {MAX_PAGE_SIZE} (default {DEFAULT_PAGE_SIZE})."
                )
            else:
                parameter["description"] = "An opaque cursor from a previous page's `next` or `previous`."
        return parameters

    @staticmethod
    def _position(run: Run) -> str:
        return f"{run.started.isoformat() if run.started else ''}|{run.pk}"

    def _decode_position(self, text: str) -> RunPosition:
        started, _, pk = text.rpartition("|")
        try:
            position = RunPosition(started=datetime.fromisoformat(started) if started else None, id=int(pk))
        except ValueError as exc:
            raise self._invalid() from exc
        if (position.started and position.started.tzinfo is None) or not 0 <= position.id < 2**63:
            raise self._invalid()
        if position.started is not None:
            # A hand-made cursor's offset may carry its time out of the years a database holds.
            try:
                position = RunPosition(started=position.started.astimezone(UTC), id=position.id)
            except OverflowError as exc:
                raise self._invalid() from exc
        return position

    def _invalid(self) -> InvalidQuery:
        return InvalidQuery(
            "query parameter is invalid: cursor",
            details={
                "errors": [
                    {
                        "index": None,
                        "field": self.cursor_query_param,
                        "message": "not a cursor this API gave out",
                    }
                ]
            },
        )
