"""Outputs of deterministic components remembered across the stages one process runs.

Stages are cached by their inputs' keys, but different stages often hand a component the same inputs: the
explanations of α = 0.8 and α = 0.9 of one ensemble mostly peak at the same pixels, so their seeders give the
same prompts and the segmenter would segment the same image with the same prompts again (on the quickstart
223 distinct image-and-prompt calls among 1,080). A ``Memo`` keys such calls by a digest of everything the
component is given and keeps the answers, least recently used first out, within a byte budget.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np

# What a memo holds at most, in bytes of the arrays it keeps.
MEMO_BYTES = 256 << 20


def digest(*parts) -> bytes:
    """A digest of ``parts``: arrays (by dtype, shape and bytes), strings, bytes, numbers and None, nested in
    tuples or lists; two calls give the same digest exactly when their parts are equal in these terms."""
    h = hashlib.blake2b(digest_size=20)

    def feed(part):
        if part is None:
            h.update(b"N")
        elif isinstance(part, (tuple, list)):
            h.update(b"(%d" % len(part))
            for item in part:
                feed(item)
            h.update(b")")
        elif isinstance(part, np.ndarray):
            array = np.ascontiguousarray(part)
            h.update(b"A" + array.dtype.str.encode() + repr(array.shape).encode())
            if array.size:
                h.update(memoryview(array).cast("B"))
        elif isinstance(part, str):
            h.update(b"S%d:" % len(part) + part.encode())
        elif isinstance(part, bytes):
            h.update(b"B%d:" % len(part) + part)
        elif isinstance(part, (bool, int, float, np.integer, np.floating)):
            h.update(b"V" + repr(part).encode())
        else:
            raise TypeError(f"cannot digest a {type(part).__name__}")

    feed(parts)
    return h.digest()


class Memo:
    """Arrays (or tuples of arrays and None) by digest, least recently used evicted beyond ``budget`` bytes."""

    def __init__(self, budget: int = MEMO_BYTES):
        self.budget = budget
        self.used = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[bytes, tuple] = OrderedDict()

    def get(self, key: bytes):
        """The value kept under ``key`` (copies of its arrays), or None."""
        found = self._items.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(key)
        return tuple(None if value is None else value.copy() for value in found[0])

    def put(self, key: bytes, *values) -> None:
        """Keep copies of ``values`` (arrays or None) under ``key``; values larger than the budget are not kept."""
        size = sum(value.nbytes for value in values if value is not None)
        if size > self.budget or key in self._items:
            return
        self._items[key] = (tuple(None if value is None else np.array(value) for value in values), size)
        self.used += size
        while self.used > self.budget:
            _, (_, dropped) = self._items.popitem(last=False)
            self.used -= dropped
