"""Cloud mode's cache (rate-limit counts): Django's Redis backend, keeping one redis-py client per
connection pool instead of building one for every call, and counting in one round trip.

Django's backend makes a new `redis.Redis` for each cache call, and building one (its table of
response callbacks) costs more than the call itself, on every ingest request. A client holds no
connection of its own and is safe to share between threads; its pool keeps the connections, and
redis-py makes a pool anew in a forked worker.

Counting runs in Redis as scripts, one round trip each: `incr_within` for the rate limit (count,
check and refund in one step, so two replicas cannot both take a window's last place), and Django's
`incr`, which would otherwise ask whether the key exists and then increment it: a missing key is a
ValueError, never a counter created without its expiry.
"""

from __future__ import annotations

from typing import Any, cast

from django.core.cache.backends.redis import RedisCache as DjangoRedisCache
from django.core.cache.backends.redis import RedisCacheClient

# INCRBY only if the key exists (Django's contract for incr), else nil.
_INCR_EXISTING = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('INCRBY', KEYS[1], ARGV[1]) end
return false
"""


# Counts one more under KEYS[1] unless that passes ARGV[1], in which case it gives it back at once;
# a new counter expires after ARGV[2] seconds. Returns the count and 1 if this one counted, else 0.
_INCR_WITHIN = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if count > tonumber(ARGV[1]) then return {redis.call('DECR', KEYS[1]), 0} end
return {count, 1}
"""


class _ClientPerPool(RedisCacheClient):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clients: dict[int, Any] = {}
        self._scripts: dict[tuple[int, str], Any] = {}

    def _script(self, client: Any, text: str) -> Any:
        script = self._scripts.get((id(client), text))
        if script is None:
            # EVALSHA, falling back to EVAL once per server: the script's text is sent once.
            script = self._scripts[(id(client), text)] = client.register_script(text)
        return script

    def incr(self, key: Any, delta: int) -> int:
        client = self.get_client(key, write=True)
        value = self._script(client, _INCR_EXISTING)(keys=[key], args=[delta])
        if value is None:
            raise ValueError(f"Key '{key}' not found.")
        return int(value)

    def incr_within(self, key: Any, limit: int, timeout: int) -> tuple[int, bool]:
        client = self.get_client(key, write=True)
        count, counted = self._script(client, _INCR_WITHIN)(keys=[key], args=[limit, timeout])
        return int(count), bool(counted)

    # Django's own client's private helpers, which its stubs leave out.
    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        index = self._get_connection_pool_index(write)  # type: ignore[attr-defined]
        client = self._clients.get(index)
        if client is None:
            # Two threads may both get here first: one spare client, no harm.
            pool = self._get_connection_pool(write)  # type: ignore[attr-defined]
            client = self._clients[index] = self._client(connection_pool=pool)  # type: ignore[attr-defined]
        return client


class RedisCache(DjangoRedisCache):
    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = _ClientPerPool

    def incr_within(
        self, key: Any, *, limit: int, timeout: int, version: int | None = None
    ) -> tuple[int, bool]:
        """Counts one more under `key` unless that passes `limit`: (the count, whether this one
        counted). A refused one is given back in the same step; a new counter lives `timeout` seconds."""
        client = cast(_ClientPerPool, self._cache)  # the class set above; the stubs know Django's
        return client.incr_within(self.make_and_validate_key(key, version=version), limit, timeout)
