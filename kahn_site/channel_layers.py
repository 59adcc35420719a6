"""The channel layers of the two modes (chosen in settings), each able to say which groups have members.

The publisher (`kahn_site.live_fanout`) asks before it builds a message: a bulk import that nobody watches
then costs one question per flush, not one serialised message per run.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

from channels.layers import InMemoryChannelLayer
from channels_redis.core import RedisChannelLayer


class MemoryChannelLayer(InMemoryChannelLayer):
    """OSS: one process serves every socket, so the layer is a dictionary in it."""

    # Only sockets of this process can listen: with no server loop here, nothing is worth sending.
    reaches_other_processes = False

    async def groups_with_members(self, groups: Iterable[str]) -> set[str]:
        return {group for group in groups if self.groups.get(group)}


class RedisLayer(RedisChannelLayer):
    """Cloud: every replica's sockets, through Redis."""

    reaches_other_processes = True

    async def groups_with_members(self, groups: Iterable[str]) -> set[str]:
        by_shard: dict[int, list[str]] = collections.defaultdict(list)
        for group in groups:
            by_shard[self.consistent_hash(group)].append(group)
        listened: set[str] = set()
        for index, names in by_shard.items():
            # One round trip per shard for the whole flush. Members that expired (group_expiry)
            # still count: at worst a message goes to a group that group_send then finds empty.
            pipe = self.connection(index).pipeline(transaction=False)
            for name in names:
                pipe.zcard(self._group_key(name))
            counts = await pipe.execute()
            listened.update(name for name, count in zip(names, counts, strict=True) if count)
        return listened
