"""The chunk tuner keeps one coalition at a time unless a chunk clearly wins beside it."""

from __future__ import annotations

from lightning_shapley.games.channel import _ChunkTuner


def settle(tuner: _ChunkTuner, per_coalition, calls: int = 200) -> int:
    """Feed the tuner chunks whose time per coalition is ``per_coalition(size)``."""
    for _ in range(calls):
        if tuner.size is not None:
            return tuner.size
        size = tuner.next_size()
        tuner.record(size, size * per_coalition(size))
    return tuner.size


def test_keeps_one_at_a_time_when_chunks_lose():
    assert settle(_ChunkTuner("auto", 64), lambda s: 1.0 + 0.1 * s) == 1


def test_keeps_one_at_a_time_when_a_chunk_wins_only_a_little():
    assert settle(_ChunkTuner("auto", 64), lambda s: 1.0 if s == 1 else 0.95) == 1


def test_takes_a_chunk_that_wins_clearly():
    best = settle(_ChunkTuner("auto", 64), lambda s: {1: 1.0, 2: 0.6, 4: 0.3, 8: 0.5}.get(s, 1))
    assert best == 4


def test_alternates_with_one_coalition_in_the_same_window():
    tuner = _ChunkTuner("auto", 64)
    asked = []
    for _ in range(4):
        size = tuner.next_size()
        asked.append(size)
        tuner.record(size, 0.001 * size)
    assert asked == [2, 1, 2, 1]


def test_a_busy_window_does_not_flip_the_decision():
    """Load that slows both plans alike (every other pair of chunks 3× slower) changes no
    ratio: the one-coalition plan stays."""
    tuner = _ChunkTuner("auto", 64)
    calls = 0
    while tuner.size is None and calls < 200:
        size = tuner.next_size()
        load = 3.0 if (calls // 2) % 2 else 1.0
        tuner.record(size, size * load * (1.0 if size == 1 else 1.02))
        calls += 1
    assert tuner.size == 1


def test_fixed_sizes_and_short_calls():
    assert _ChunkTuner(8, 4).next_size() == 4
    assert _ChunkTuner("auto", 1).next_size() == 1
    tuner = _ChunkTuner("auto", 64)
    for _ in range(3):  # calls of one coalition while the tuner asks for two
        assert tuner.next_size() == 2
        tuner.record(1, 0.01)
    assert tuner.size == 1
