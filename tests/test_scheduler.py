"""The scheduler's policy, by plain calls: no event loop, no kernel.

A "step" here is what the engine does with a plan: every chunk's tokens are
recorded as computed, and a chunk that samples appends a made-up token."""

from __future__ import annotations

from pycompat.engine.blocks import BlockManager
from pycompat.engine.scheduler import Chunk, Scheduler
from pycompat.engine.sequence import Sequence, SequenceGroup, Status

BS = 4


def make(n_blocks: int = 32, step_tokens: int = 16, max_queue: int = 8, prefix_caching: bool = True) -> Scheduler:
    return Scheduler(BlockManager(n_blocks, BS, prefix_caching), step_tokens, max_queue)


def request(s: Scheduler, *prompts: list[int], budget: int = 4) -> list[Sequence]:
    group = SequenceGroup(request_id=len(s._queued) + 1, sequences=[Sequence(list(p), len(p), budget, None) for p in prompts])
    s.add(group)
    return group.sequences


def step(s: Scheduler) -> list[Chunk]:
    plan = s.plan()
    for chunk in plan:
        s.computed(chunk)
        if chunk.samples:
            chunk.seq.tokens.append(7)
    return plan


def shape(plan: list[Chunk]) -> list[tuple[int, int, bool]]:
    return [(c.seq.prompt_len, c.n_tokens, c.samples) for c in plan]


def test_a_long_prompt_is_computed_in_chunks_while_others_decode():
    s = make(step_tokens=10)
    (short,) = request(s, [1, 2, 3])
    assert shape(step(s)) == [(3, 3, True)]
    assert short.status is Status.DECODING
    (long,) = request(s, list(range(100, 125)))  # 25 tokens
    assert shape(step(s)) == [(3, 1, True), (25, 9, False)]  # the decode goes first
    assert long.status is Status.PREFILLING
    assert shape(step(s)) == [(3, 1, True), (25, 9, False)]
    assert shape(step(s)) == [(3, 1, True), (25, 7, True)]
    assert long.status is Status.DECODING and long.computed == 25


def test_admission_waits_for_the_blocks_a_request_may_need_first_come_first_served():
    s = make(n_blocks=6)  # 24 positions
    (a,) = request(s, list(range(10)), budget=6)  # needs 4 blocks
    (b,) = request(s, list(range(20, 30)), budget=6)  # needs 4 more: does not fit yet
    (c,) = request(s, [1], budget=1)  # would fit, but waits behind b
    step(s)
    assert (a.status, b.status, c.status) == (Status.DECODING, Status.WAITING, Status.WAITING)
    assert s.queued_requests == 2
    s.finish(a)
    step(s)
    assert (b.status, c.status) == (Status.DECODING, Status.DECODING)
    assert s.queued_requests == 0


def test_a_request_is_queued_as_one_group_and_the_queue_counts_requests():
    s = make(max_queue=2)
    request(s, [1, 2], [3, 4], [5, 6])
    assert s.queued_requests == 1 and s.has_room()
    request(s, [9])
    assert not s.has_room()


def test_cancelled_sequences_leave_at_the_next_plan_and_give_their_blocks_back():
    s = make()
    running, waiting = request(s, list(range(9)), [1, 2, 3])
    step(s)
    assert s.blocks.used > 0
    running.cancelled = waiting.cancelled = True
    assert step(s) == []
    assert (running.status, waiting.status) == (Status.FINISHED, Status.FINISHED)
    assert s.blocks.used == 0 and not s.running and not s.waiting and s.queued_requests == 0


def test_a_shared_prefix_is_found_and_only_the_rest_is_computed():
    s = make()
    prefix = list(range(40, 52))  # three full blocks
    (first,) = request(s, prefix + [1, 2])
    step(s)
    s.finish(first)
    (second,) = request(s, prefix + [3, 4, 5])
    assert shape(step(s)) == [(15, 3, True)]
    assert second.cached_tokens == 12


def test_a_prompt_that_is_scored_is_computed_whole_and_still_shared():
    # Each prompt token's log-probability needs its logits: no block comes from
    # the cache, but the blocks it fills are found by the prompts after it.
    prefix = list(range(40, 52))

    def scored(s: Scheduler) -> Sequence:
        seq = Sequence(prefix + [3, 4, 5], 15, 4, None, scores_prompt=True)
        s.add(SequenceGroup(9, [seq]))
        assert shape(step(s)) == [(15, 15, True)] and seq.cached_tokens == 0
        s.finish(seq)
        return seq

    s = make()
    (first,) = request(s, prefix + [1, 2])
    step(s)
    s.finish(first)
    scored(s)  # the first prompt's blocks are cached: not used
    s = make()
    scored(s)
    (after,) = request(s, prefix + [6])
    assert shape(step(s)) == [(13, 1, True)] and after.cached_tokens == 12


def test_the_prompts_last_token_is_always_computed():
    # Its logits give the first new token, so a prompt of whole cached blocks
    # reuses all of them but the last.
    s = make()
    prompt = list(range(8))
    (first,) = request(s, prompt)
    step(s)
    s.finish(first)
    (again,) = request(s, prompt)
    assert shape(step(s)) == [(8, 4, True)] and again.cached_tokens == 4


def test_finish_is_idempotent_and_reset_forgets_everything():
    s = make()
    a, b = request(s, list(range(6)), [1])
    step(s)
    s.finish(a)
    s.finish(a)
    assert s.blocks.used == 1  # b's block only
    (c,) = request(s, [2, 3])
    assert set(s.reset()) == {b, c}
    assert s.blocks.used == 0 and not s.running and not s.waiting and s.queued_requests == 0
    assert all(seq.status is Status.FINISHED for seq in (a, b, c))


def forked(s: Scheduler, prompt: list[int], n: int, budget: int = 4) -> list[Sequence]:
    """One request of ``n`` choices of ``prompt``, as the engine makes it."""
    first = Sequence(list(prompt), len(prompt), budget, None)
    others = [Sequence(list(prompt), len(prompt), budget, None, fork_of=first) for _ in range(n - 1)]
    s.add(SequenceGroup(request_id=99, sequences=[first, *others]))
    return [first, *others]


def test_the_choices_of_a_prompt_compute_it_once_and_share_its_full_blocks():
    s = make(n_blocks=64, step_tokens=64)
    prompt = list(range(100, 140))  # 40 tokens: 10 full blocks
    first, *others = forked(s, prompt, 3)
    assert shape(step(s)) == [(40, 40, True)]  # the others wait for the prompt
    assert all(o.status is Status.WAITING for o in others)
    # Then each computes only the last block's 4 tokens (the last one gives its first
    # sample), over the first's 9 other blocks, now shared.
    assert shape(step(s)) == [(40, 1, True), (40, 4, True), (40, 4, True)]
    for o in others:
        assert o.blocks[:9] == first.blocks[:9] and o.blocks[9] != first.blocks[9] and o.cached_tokens == 36
    assert s.blocks.used == 11 + 2 * 1  # the first's 11 blocks, one of each other's own
    for seq in (first, *others):
        s.finish(seq)
    assert s.blocks.used == 0


def test_a_choice_whose_first_ended_early_computes_the_prompt_itself():
    s = make(n_blocks=64, step_tokens=64, prefix_caching=False)
    first, other = forked(s, list(range(20)), 2)
    step(s)
    s.finish(first)  # e.g. an end-of-turn token as its first token
    assert shape(step(s)) == [(20, 20, True)] and other.cached_tokens == 0
