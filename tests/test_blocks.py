"""The engine's block bookkeeping: prefix matching, sharing, LRU eviction."""

from __future__ import annotations

from pycompat.engine.blocks import ROOT, BlockManager

BS = 4


def run_sequence(m: BlockManager, tokens: list[int]) -> list[int]:
    """What the engine does for a sequence that computes ``tokens`` from scratch:
    allocate a block per BS positions and seal each full one."""
    blocks, parent = [], ROOT
    for start in range(0, len(tokens), BS):
        b = m.allocate()
        blocks.append(b)
        if start + BS <= len(tokens):
            parent = m.seal(b, parent, tokens[start : start + BS])
    return blocks


def test_a_finished_sequence_leaves_its_full_blocks_findable():
    m = BlockManager(8, BS)
    first = run_sequence(m, list(range(10)))  # blocks: full, full, partial
    assert (m.used, m.free) == (3, 5)
    m.release(first)
    assert (m.used, m.cached, m.free) == (0, 2, 6)
    found = m.match(list(range(10)) + [99], limit=10)
    assert found == first[:2]
    assert m.match([0, 1, 2, 3, 4, 5, 6, 99], limit=8) == first[:1]  # differs in the second block
    assert m.match([7] + list(range(1, 10)), limit=10) == []  # differs in the first
    assert m.match(list(range(10)), limit=7) == first[:1]  # whole blocks within the limit only


def test_a_block_matches_only_after_the_same_prefix():
    m = BlockManager(8, BS)
    a = run_sequence(m, [1, 1, 1, 1, 2, 2, 2, 2])
    m.release(a)
    # Same second block after a different first: not a match.
    assert m.match([9, 9, 9, 9, 2, 2, 2, 2, 0], limit=8) == []


def test_taking_matched_blocks_shares_them_and_counts_references():
    m = BlockManager(8, BS)
    a = run_sequence(m, list(range(8)))
    found = m.match(list(range(8)) + [5], limit=8)
    assert found == a and m.newly_referenced(found) == 0  # a still holds them
    m.take(found)
    m.release(a)
    assert m.cached == 0 and m.used == 2  # still referenced by the second sequence
    m.release(found)
    assert m.cached == 2


def test_eviction_takes_free_blocks_first_then_the_least_recently_used():
    m = BlockManager(4, BS)
    old = run_sequence(m, [1] * 4)
    new = run_sequence(m, [2] * 4)
    m.release(old)
    m.release(new)
    assert m.available == 4 and m.cached == 2
    m.allocate(), m.allocate()  # the two free blocks
    assert m.match([1] * 4 + [0], limit=4) == old
    m.allocate()  # evicts `old`, used less recently than `new`
    assert m.match([1] * 4 + [0], limit=4) == []
    assert m.match([2] * 4 + [0], limit=4) == new


def test_a_duplicate_block_is_freed_not_cached():
    m = BlockManager(8, BS)
    a = run_sequence(m, [3] * 8)
    b = run_sequence(m, [3] * 8)  # computed at the same time as a, before a was findable
    m.release(b)
    assert m.cached == 0 and m.free == 6
    m.release(a)
    assert m.cached == 2


def test_prefix_caching_off_caches_nothing():
    m = BlockManager(8, BS, prefix_caching=False)
    m.release(run_sequence(m, list(range(8))))
    assert m.cached == 0 and m.free == 8
    assert m.match(list(range(9)), limit=8) == []
