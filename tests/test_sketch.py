"""The heavy-hitter sketch (proxy/sketch.py): exact below capacity, bounded error and
bounded size above it, and a merge that keeps the bound."""

from __future__ import annotations

import random
from collections import Counter

from proxy.sketch import CAPACITY, Sketch, merged


def _feed(values: list[str]) -> Sketch:
    sketch = Sketch()
    for value in values:
        sketch.add(value, sent=10)
    return sketch


def _zipf(n: int, distinct: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    weights = [1 / rank for rank in range(1, distinct + 1)]
    return [f"v{i}" for i in rng.choices(range(distinct), weights, k=n)]


def _assert_bounded(sketch: Sketch, truth: Counter[str], n: int) -> None:
    assert len(sketch) <= CAPACITY
    assert sketch.floor <= n / CAPACITY
    for item, count, error, _ in sketch.items():
        assert count - error <= truth[item] <= count
        assert error <= sketch.floor or error <= n / CAPACITY
    tracked = {item for item, *_ in sketch.items()}
    for item, true_count in truth.items():
        if item not in tracked:
            assert true_count <= sketch.floor  # nothing big is ever missed


def test_exact_below_capacity() -> None:
    values = [f"host{i % 20}" for i in range(1000)] + ["rare"]
    sketch = _feed(values)
    truth = Counter(values)
    assert sketch.floor == 0
    assert {item: (c, e, b) for item, c, e, b in sketch.items()} == {
        item: (n, 0, 10 * n) for item, n in truth.items()
    }
    assert [item for item, *_ in sketch.top(2)] == ["host0", "host1"]  # ties by name


def test_zipf_stream_has_bounded_error_and_its_true_top_20() -> None:
    values = _zipf(5000, 1000, seed=1)
    sketch, truth = _feed(values), Counter(values)
    _assert_bounded(sketch, truth, len(values))
    assert {i for i, *_ in sketch.top(10)} == {i for i, _ in truth.most_common(10)}


def test_adversarial_stream_never_grows_the_table() -> None:
    # Every request a new value (random Referers, paths, addresses), with one real
    # heavy hitter hidden in it: the table stays at capacity and the heavy one stays.
    values = [f"attacker-{i}" if i % 4 else "real.example" for i in range(8000)]
    sketch, truth = _feed(values), Counter(values)
    assert len(sketch) == CAPACITY
    _assert_bounded(sketch, truth, len(values))
    item, count, error, _ = sketch.top(1)[0]
    assert item == "real.example" and count - error <= 2000 <= count


def test_merge_keeps_counts_exact_below_capacity_and_bounded_above() -> None:
    a, b = ["x"] * 5 + ["y"] * 2, ["y"] * 3 + ["z"]
    total = merged([_feed(a), _feed(b)])
    assert [(i, c, e) for i, c, e, _ in total.items()] == [("x", 5, 0), ("y", 5, 0), ("z", 1, 0)]
    first, second = _zipf(3000, 500, seed=2), _zipf(3000, 500, seed=3)
    both = merged([_feed(first), _feed(second)])
    _assert_bounded(both, Counter(first + second), 6000)


def test_the_wire_form_round_trips() -> None:
    sketch = _feed([*_zipf(2000, 300, seed=4), "/a b/c.png"])
    again = Sketch.loads(sketch.dumps())
    assert list(again.items()) == list(sketch.items())
    assert Sketch.loads("garbage\n1\t0\t5\tok\n").top(5) == [("ok", 1, 0, 5)]
