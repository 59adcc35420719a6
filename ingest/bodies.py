"""Request bodies (SPEC section 5): how much of one the server reads, for how long, and in what form.

- A request to the API that carries a body is admitted from its headers alone, before its body is
  read: without valid credentials it is refused at once (the mode's check, `KAHN_BODY_CREDENTIALS`),
  as is a declared length over the limit, a `multipart/*` body or a content encoding other than gzip.
- No body is read past `MAX_BODY_BYTES`, and none for longer than `KAHN_REQUEST_BODY_TIMEOUT`
  seconds after its headers: a body that trickles in is dropped.
- `Content-Encoding: gzip` is decompressed a piece at a time, to the same limit: a small body that
  inflates past it is refused as soon as it does, without ever being inflated whole.

Each server applies the first two where it reads bodies: daphne (`manage.py serve`) reads a body
whole before it calls the application, so its requests are admitted as their headers arrive
(kahn_site.http_server); gunicorn's workers (`serve --http-workers`) read nothing until a view asks,
after the tenant middleware has checked the credentials, and their reads share the request's
deadline (kahn_site.wsgi). The ingest views read every body through `request_body`.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import IO, Any, cast

from django.conf import settings
from django.core.exceptions import BadRequest
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.cookie import parse_cookie
from django.utils.module_loading import import_string
from rest_framework import status

from ingest.services import MAX_REQUEST_BYTES, BatchTooLarge, InvalidBody, UnsupportedMediaType
from kahn_site.api_errors import API_PREFIX, ApiError, api_error_from, error_body

# A producer's batch (SPEC section 5); more than any form of the site ever sends.
MAX_BODY_BYTES = MAX_REQUEST_BYTES
ACCEPTED_ENCODINGS = ("gzip", "identity")
# What a body is read in: a socket's worth at a time.
READ_SIZE = 64 * 1024


class BodyTimeout(ApiError, BadRequest):
    """The body did not arrive in time. An API view answers 408 in the contract's shape; a page
    reading a form (Django's BadRequest) answers 400."""

    status_code = status.HTTP_408_REQUEST_TIMEOUT
    code = "request_timeout"

    def __init__(self) -> None:
        timeout = body_timeout()
        super().__init__(
            f"the request body did not arrive within {timeout:g} seconds of its headers",
            details={"timeout_s": timeout},
        )


def body_timeout() -> float:
    return float(settings.KAHN_REQUEST_BODY_TIMEOUT)


def body_too_large(declared: int | None = None) -> ApiError:
    size = f"the request is {declared} bytes; " if declared is not None else ""
    return api_error_from(
        BatchTooLarge(
            f"{size}a request body is at most {MAX_BODY_BYTES} bytes", details={"max_bytes": MAX_BODY_BYTES}
        )
    )


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _encoding(value: str) -> str:
    return value.strip().lower() or "identity"


def _refused_form(content_type: str, content_encoding: str) -> ApiError | None:
    """A body in a form no endpoint takes: multipart, or an encoding other than gzip."""
    if _media_type(content_type).startswith("multipart/"):
        return api_error_from(
            UnsupportedMediaType(
                f"{_media_type(content_type)} is not accepted: send events as application/x-ndjson or "
                "application/json, and a graph or summary as application/json",
                details={"content_type": _media_type(content_type)},
            )
        )
    encodings = [_encoding(part) for part in content_encoding.split(",")] if content_encoding else []
    unknown = [e for e in encodings if e not in ACCEPTED_ENCODINGS]
    if unknown or encodings.count("gzip") > 1:
        return api_error_from(
            UnsupportedMediaType(
                f"Content-Encoding {content_encoding.strip()!r} is not accepted: send the body as it is, "
                "or compressed once with gzip",
                details={
                    "content_encoding": content_encoding.strip()[:100],
                    "accepted": list(ACCEPTED_ENCODINGS),
                },
            )
        )
    return None


def _declared_length(value: str | None) -> int | None:
    return int(value) if value and value.strip().isdigit() else None


# ---------------------------------------------------------------- before the body (the server's)


def error_response(error: ApiError, headers: Mapping[str, str] | None = None) -> HttpResponse:
    """An error of the contract as a response, for a server that answers before any view runs."""
    return JsonResponse(
        error_body(error.code, error.message, error.details), status=error.status_code, headers=headers
    )


# A body declared this small may be read whole before its credentials are checked: the contract
# allows reading this much of it, and the request itself checks them (the tenant middleware), so a
# producer's small batch costs no second look at its key.
READ_BEFORE_CREDENTIALS = 64 * 1024


def admission_needs_database(path: str, headers: Mapping[str, str]) -> bool:
    """Whether `admission_refusal` checks this request's credentials (which may query the database)."""
    if not settings.KAHN_BODY_CREDENTIALS or not path.startswith(API_PREFIX):
        return False
    declared = _declared_length(headers.get("content-length"))
    return declared is None or declared > READ_BEFORE_CREDENTIALS


def admission_refusal(method: str, path: str, headers: Mapping[str, str]) -> HttpResponse | None:
    """Whether a request that carries a body may send it, judged from its request line and headers
    (names in lower case) before any of it is read; None admits it. May query the database (the
    credentials), so a server calls it off its event loop."""
    if admission_needs_database(path, headers):
        # The headers only, as a request: the same check the request will meet in full later.
        request = HttpRequest()
        request.method, request.path = method, path
        request.META = {f"HTTP_{name.upper().replace('-', '_')}": value for name, value in headers.items()}
        request.COOKIES = parse_cookie(headers.get("cookie", ""))
        # admission_needs_database answers False unless the setting names a check.
        refusal = import_string(cast(str, settings.KAHN_BODY_CREDENTIALS))(request)
        if refusal is not None:
            return refusal
    if path.startswith(API_PREFIX):
        refused = _refused_form(headers.get("content-type", ""), headers.get("content-encoding", ""))
        if refused is not None:
            return error_response(refused)
    declared = _declared_length(headers.get("content-length"))
    if declared is not None and declared > MAX_BODY_BYTES:
        return error_response(body_too_large(declared))
    return None


def oversize_response() -> HttpResponse:
    return error_response(body_too_large())


def timeout_response() -> HttpResponse:
    return error_response(BodyTimeout())


# ---------------------------------------------------------------- in the view


def _stream(request: HttpRequest) -> IO[bytes] | HttpRequest:
    # Django reads a WSGI body only as far as Content-Length says, so a chunked one reads as empty;
    # a server that ends wsgi.input at the body's end (gunicorn) is read from directly.
    if request.META.get("CONTENT_LENGTH") in (None, "") and request.META.get("wsgi.input_terminated"):
        return request.META["wsgi.input"]
    return request


def _raw_body(request: HttpRequest) -> bytes:
    declared = _declared_length(request.META.get("CONTENT_LENGTH"))
    if declared is not None and declared > MAX_BODY_BYTES:
        raise body_too_large(declared)
    stream = _stream(request)
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_BODY_BYTES:
        chunk = stream.read(min(READ_SIZE, MAX_BODY_BYTES + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > MAX_BODY_BYTES:
        raise body_too_large()
    return b"".join(chunks)


def _gunzip(raw: bytes) -> bytes:
    """The body gzip holds, inflated a piece at a time and never past the limit."""
    pieces: list[bytes] = []
    size = 0
    pending = raw
    try:
        while True:  # one gzip member after another, as RFC 1952 allows
            inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            while True:
                piece = inflater.decompress(pending, MAX_BODY_BYTES + 1 - size)
                pieces.append(piece)
                size += len(piece)
                if size > MAX_BODY_BYTES:
                    raise api_error_from(
                        BatchTooLarge(
                            f"the body inflates past {MAX_BODY_BYTES} bytes; a request body is at most "
                            "that once decompressed",
                            details={"max_bytes": MAX_BODY_BYTES},
                        )
                    )
                pending = inflater.unconsumed_tail
                if not pending:
                    break
            if not inflater.eof:
                raise zlib.error("the gzip stream ends early")
            pending = inflater.unused_data
            if not pending:
                break
    except zlib.error as exc:
        raise api_error_from(
            InvalidBody(
                "the body is not valid gzip data", [{"index": None, "field": "", "message": str(exc)}]
            )
        ) from None
    return b"".join(pieces)


def request_body(request: Any) -> bytes:
    """The body of a producer's request, decompressed, within the limits; or the contract's error."""
    refused = _refused_form(
        request.META.get("CONTENT_TYPE", ""), request.META.get("HTTP_CONTENT_ENCODING", "")
    )
    if refused is not None:
        raise refused
    raw = _raw_body(request)
    if _encoding(request.META.get("HTTP_CONTENT_ENCODING", "")) == "gzip":
        return _gunzip(raw)
    return raw
