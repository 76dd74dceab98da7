"""Whole metadata answers, kept ready to send (and compressed once) per process.

Viewers ask for a slide's series metadata again and again, and the metadata of a
100,000-frame TILED_SPARSE level runs to tens of MB. Each answer is named by its ETag
(the generations it is made of, the public base URL, the encoding), so a kept answer
can never be stale: a changed series has another tag.
"""

from __future__ import annotations

from collections import OrderedDict


class AnswerCache:
    """An LRU of answer bodies by ETag, bounded in bytes; an answer above half the budget is not kept."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._size = 0
        self._items: OrderedDict[str, bytes] = OrderedDict()

    @property
    def largest(self) -> int:
        """The size of the largest answer worth collecting for :meth:`put`."""
        return self._max // 2

    def get(self, tag: str) -> bytes | None:
        """The body named ``tag``, marking it recently used."""
        body = self._items.get(tag)
        if body is not None:
            self._items.move_to_end(tag)
        return body

    def put(self, tag: str, body: bytes) -> None:
        """Keep ``body``, evicting the least recently used answers beyond the budget."""
        if len(body) > self.largest or tag in self._items:
            return
        self._items[tag] = body
        self._size += len(body)
        while self._size > self._max:
            _, evicted = self._items.popitem(last=False)
            self._size -= len(evicted)
