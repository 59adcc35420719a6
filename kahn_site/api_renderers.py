"""The API's JSON renderer: DRF's output, encoded by orjson, the faster encoder, rather than the
standard library's json."""

from typing import Any

import orjson
from rest_framework.renderers import JSONRenderer
from rest_framework.utils.encoders import JSONEncoder

_fallback = JSONEncoder()


class OrjsonRenderer(JSONRenderer):
    def render(
        self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None
    ) -> bytes:
        if data is None:
            return b""
        # Types orjson does not know (Decimal, lazy strings, …) go through DRF's own encoder.
        try:
            return orjson.dumps(data, default=_fallback.default, option=orjson.OPT_NON_STR_KEYS)
        except orjson.JSONEncodeError:
            # An integer past 64 bits, which a producer's unknown field may hold (PostgreSQL's
            # jsonb even gives back 1e300 as one): DRF's own renderer writes any JSON value.
            return super().render(data, accepted_media_type, renderer_context)
