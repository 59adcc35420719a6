"""The one error shape of every API response (SPEC section 11), whatever raised it.

`{"error": {"code": "run_not_found", "message": "human sentence", "details": {...}}}`: clients branch
on `code`, people read `message`. Views raise an `ApiError` (or any DRF exception); the exception
handler below renders it, and the 404/500 handlers do the same for API paths Django itself answers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.serializers import as_serializer_error

logger = logging.getLogger(__name__)

API_PREFIX = "/api/"

# DRF's own codes, renamed where the contract has a word of its own.
RENAMED_CODES = {
    "throttled": "rate_limited",
    "parse_error": "invalid_body",
    "invalid": "invalid_request",
    "error": "internal_error",
}


class ApiError(exceptions.APIException):
    """An error of the contract: a status, a stable code, a sentence, and details for machines."""

    status_code: int = status.HTTP_400_BAD_REQUEST
    code = "invalid_request"

    def __init__(self, message: str, *, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(detail=message, code=self.code)
        self.message = message
        self.details = dict(details or {})


class InvalidQuery(ApiError):
    code = "invalid_query"

    @classmethod
    def from_serializer_errors(cls, errors: Mapping[str, Any]) -> InvalidQuery:
        problems = field_errors(errors)
        names = ", ".join(dict.fromkeys(p["field"] for p in problems))
        noun = "parameter is" if len(problems) == 1 else "parameters are"
        return cls(f"query {noun} invalid: {names}", details={"errors": problems})


class RunNotFound(ApiError):
    status_code = status.HTTP_404_NOT_FOUND
    code = "run_not_found"

    def __init__(self, run_id: str) -> None:
        super().__init__(f"there is no run {run_id!r}", details={"run_id": run_id})


class RunDeleted(ApiError):
    """A run that retention removed (SPEC section 9): when and why are in the details."""

    status_code = status.HTTP_410_GONE
    code = "run_deleted"


class Refusal(Protocol):
    """What a service refuses with, as a plain exception: no HTTP in it (runs.errors, ingest.services)."""

    @property
    def code(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def details(self) -> dict[str, Any]: ...


# The HTTP status of each refusal's code; any other code is a 400.
REFUSAL_STATUS = {
    "event_too_large": status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    "batch_too_large": status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    "unsupported_media_type": status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    "seq_conflict": status.HTTP_409_CONFLICT,
    "seq_gap": status.HTTP_409_CONFLICT,
    "run_not_started": status.HTTP_409_CONFLICT,
    "run_ended": status.HTTP_409_CONFLICT,
    "already_written": status.HTTP_409_CONFLICT,
    "run_deleted": status.HTTP_410_GONE,
}


def api_error_from(refusal: Refusal) -> ApiError:
    """A service's refusal as the API's error: its code, sentence and details, with its status."""
    error = ApiError(refusal.message, details=refusal.details)
    error.code = refusal.code
    error.status_code = REFUSAL_STATUS.get(refusal.code, status.HTTP_400_BAD_REQUEST)
    return error


def field_errors(errors: Any, *, index: int | None = None, prefix: str = "") -> list[dict[str, Any]]:
    """DRF's nested error dicts and lists as the contract's flat list of {index, field, message}."""
    if isinstance(errors, Mapping):
        return [
            problem
            for name, nested in errors.items()
            for problem in field_errors(
                nested, index=index, prefix=_join(prefix, "" if name == "non_field_errors" else name)
            )
        ]
    if isinstance(errors, list | tuple) and any(isinstance(e, Mapping | list | tuple) for e in errors):
        return [
            problem
            for i, nested in enumerate(errors)
            for problem in field_errors(nested, index=index, prefix=f"{prefix}[{i}]")
        ]
    messages = errors if isinstance(errors, Iterable) and not isinstance(errors, str) else [errors]
    return [{"index": index, "field": prefix, "message": str(message)} for message in messages]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def error_body(code: str, message: str, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": dict(details or {})}}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """DRF's EXCEPTION_HANDLER: every error, expected or not, leaves in the contract's shape."""
    if isinstance(exc, Http404):
        exc = exceptions.NotFound("nothing is here")
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()

    if isinstance(exc, ApiError):
        body = error_body(exc.code, exc.message, exc.details)
    elif isinstance(exc, exceptions.ValidationError):
        problems = field_errors(as_serializer_error(exc))
        body = error_body("invalid_request", "the request is invalid", {"errors": problems})
    elif isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else exc.default_code
        body = error_body(RENAMED_CODES.get(code, code), str(exc.detail))
    else:
        # A bug, not bad input: log it whole and answer in the contract's shape. Like every error
        # answer, it rolls the request's transaction back (tenants.middleware).
        logger.exception("unhandled error in %s", context.get("view").__class__.__name__, exc_info=exc)
        return Response(
            error_body("internal_error", "the server failed to answer; the error is logged"),
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )

    headers = {}
    if auth_header := getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = auth_header
    if wait := getattr(exc, "wait", None):
        headers["Retry-After"] = str(int(wait))
    return Response(body, status=exc.status_code, headers=headers)


def not_found_handler(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler404: no route matched. API clients get JSON; people get the site's 404 page."""
    if request.path.startswith(API_PREFIX):
        return JsonResponse(error_body("not_found", f"no API endpoint at {request.path}"), status=404)
    return defaults.page_not_found(request, exception)


def server_error_handler(request: HttpRequest) -> HttpResponse:
    if request.path.startswith(API_PREFIX):
        body = error_body("internal_error", "the server failed to answer; the error is logged")
        return JsonResponse(body, status=500)
    return defaults.server_error(request)
