"""A bounded heavy-hitter sketch: Space-Saving (Metwally, Agrawal, El Abbadi, "Efficient
Computation of Frequent and Top-k Elements in Data Streams", ICDT 2005), for the
per-key top lists of SPEC section 15. A leaf: it imports nothing of keyfront.

Why Space-Saving rather than Misra-Gries: both keep at most `capacity` counters and
are mergeable; Space-Saving's counts are upper bounds with a per-item error, so a
reported count is never below the truth and an item that entered late says by how
much it may be over, and it needs no decrement pass over every counter (a request
that brings a new value evicts one counter; Misra-Gries would touch all of them).

The guarantee, for a stream of N requests (weights) and C = `capacity`:
- fewer than C distinct values ever seen: every count is exact (error 0);
- otherwise each tracked item has count - error <= true count <= count, and
  error <= `floor` (the smallest count in a full table) <= N / C;
- any value whose true count exceeds N / C is tracked.
The table never holds more than C items, whatever the input (a client chooses its
Referer, path and, behind a trusted proxy, its address).

`bytes` of an item is what was counted while it was tracked: exact for items never
evicted (all of them below capacity), else a lower bound.

Merging (`merge`): the standard merge of Space-Saving summaries (Agarwal et al.,
"Mergeable Summaries", PODS 2012; Cafaro et al., "Parallel Space Saving", 2016): an
item missing from one side is taken to have that side's floor (0 unless full), counts
and errors add, and the C largest counts are kept. The merged error is at most the
sum of the two floors, so at most (N1 + N2) / C: the bound holds across flushes,
processes and the hours of a day.

Capacity 64 for a top 20 (SPEC section 15): the error bound is N / 64 rather than
N / 20, and the 20th value of a skewed stream sits well above the floor, so the top 20
reported are the true top 20 in all but near-ties (tests/test_sketch.py, Zipf).

Wire form (`dumps`/`loads`): one line per item, "count TAB error TAB bytes TAB item",
items holding no TAB or newline (the collector's values cannot: see analytics.py).
The Redis store merges this text in Lua (store/analytics.lua) by the same rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

CAPACITY = 64


class Sketch:
    """At most `capacity` items, each with [count, error, bytes]. `counters` is read-only
    outside this class, but for analytics.Traffic, which counts a tracked item in place
    (the common case of every request) without a method call."""

    __slots__ = ("capacity", "counters")

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self.counters: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return len(self.counters)

    def add(self, item: str, sent: int = 0, weight: int = 1) -> None:
        """Count `weight` requests of `item` that sent `sent` body bytes."""
        entry = self.counters.get(item)
        if entry is not None:
            entry[0] += weight
            entry[2] += sent
            return
        table = self.counters
        if len(table) < self.capacity:
            table[item] = [weight, 0, sent]
            return
        # Full: the new item takes over the smallest counter (its count becomes the
        # error). O(capacity), paid only by a value not tracked when the table is full.
        smallest = min(table, key=lambda k: table[k][0])
        floor = table.pop(smallest)[0]
        table[item] = [floor + weight, floor, sent]

    @property
    def floor(self) -> int:
        """The largest count an untracked item can have: 0 unless the table is full."""
        if len(self.counters) < self.capacity:
            return 0
        return min(entry[0] for entry in self.counters.values())

    def items(self) -> Iterator[tuple[str, int, int, int]]:
        """(item, count, error, bytes), largest count first (ties by item)."""
        ordered = sorted(self.counters.items(), key=lambda kv: (-kv[1][0], kv[0]))
        for item, (count, error, sent) in ordered:
            yield item, count, error, sent

    def top(self, n: int) -> list[tuple[str, int, int, int]]:
        return list(self.items())[:n]

    def merge(self, other: Sketch) -> None:
        """Fold `other` into this sketch (module docstring: the bound is kept)."""
        mine, theirs = self.floor, other.floor
        merged: dict[str, list[int]] = {}
        for item, (count, error, sent) in self.counters.items():
            merged[item] = [count + theirs, error + theirs, sent]
        for item, (count, error, sent) in other.counters.items():
            entry = merged.get(item)
            if entry is None:
                merged[item] = [count + mine, error + mine, sent]
            else:  # tracked on both sides: the floor added above was a guess; undo it
                entry[0] += count - theirs
                entry[1] += error - theirs
                entry[2] += sent
        kept = sorted(merged.items(), key=lambda kv: (-kv[1][0], kv[0]))[: self.capacity]
        self.counters = dict(kept)

    def dumps(self) -> str:
        return "".join(f"{c}\t{e}\t{b}\t{item}\n" for item, c, e, b in self.items())

    @classmethod
    def loads(cls, text: str, capacity: int = CAPACITY) -> Sketch:
        """The inverse of `dumps`; a malformed line is skipped (stored text is ours)."""
        sketch = cls(capacity)
        for line in text.split("\n"):
            parts = line.split("\t", 3)
            if len(parts) == 4 and len(sketch.counters) < capacity:
                try:
                    sketch.counters[parts[3]] = [int(parts[0]), int(parts[1]), int(parts[2])]
                except ValueError:
                    continue
        return sketch


def merged(sketches: Iterable[Sketch], capacity: int = CAPACITY) -> Sketch:
    """One sketch of many (periods, keys, processes)."""
    total = Sketch(capacity)
    for sketch in sketches:
        total.merge(sketch)
    return total
