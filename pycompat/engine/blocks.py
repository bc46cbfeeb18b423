"""Which KV cache blocks hold what: allocation, sharing and the prefix cache.

The kernel's cache is ``n_blocks`` blocks of ``block_size`` positions; a
sequence's block table lists the blocks that hold its positions in order.
This class decides which blocks those are. A block is in one of three states:

- free: holds nothing anyone can use;
- in use: referenced by one or more running sequences (``refs > 0``);
- cached: full, unreferenced, and findable by its contents, so that a later
  request that starts with the same tokens reuses it instead of recomputing
  it. Cached blocks are the first to go when a block is needed and none is
  free, least recently used first.

A full block is identified by its tokens and by the identity of the block
before it (the whole prefix up to it, without hashing the prefix again):
``(parent id, tokens)``. Ids are never reused, so a match is exact. Only full
blocks are shared, and a full block is never written again, so sharing needs
no copy-on-write.
"""

from __future__ import annotations

from collections import OrderedDict

ROOT = 0  # the "parent" of a sequence's first block


class BlockManager:
    def __init__(self, n_blocks: int, block_size: int, prefix_caching: bool = True):
        self.n_blocks, self.block_size, self.prefix_caching = n_blocks, block_size, prefix_caching
        self._free = list(range(n_blocks - 1, -1, -1))  # a stack: low ids first, reused first
        self._refs = [0] * n_blocks
        self._id = [ROOT] * n_blocks  # a full block's identity, ROOT while it has none
        self._key: list[tuple | None] = [None] * n_blocks
        self._by_key: dict[tuple, int] = {}
        self._cached: OrderedDict[int, None] = OrderedDict()  # unreferenced cached blocks, oldest first
        self._next_id = ROOT + 1

    # --- what /health and admission see ---

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def cached(self) -> int:
        """Blocks that hold a reusable prefix and no running sequence uses."""
        return len(self._cached)

    @property
    def used(self) -> int:
        return self.n_blocks - self.free - self.cached

    @property
    def available(self) -> int:
        """Blocks that can be handed out now: free ones, then cached ones (evicted)."""
        return self.free + self.cached

    # --- sequences ---

    def match(self, tokens: list[int], limit: int) -> list[int]:
        """The cached blocks that hold the longest prefix of ``tokens`` (at most
        ``limit`` tokens, whole blocks only). Not yet taken: see ``take``."""
        found: list[int] = []
        if not self.prefix_caching:
            return found
        parent, bs = ROOT, self.block_size
        for start in range(0, limit - bs + 1, bs):
            block = self._by_key.get((parent, tuple(tokens[start : start + bs])))
            if block is None:
                break
            found.append(block)
            parent = self._id[block]
        return found

    def newly_referenced(self, blocks: list[int]) -> int:
        """How many of ``blocks`` (from ``match``) are unreferenced now: taking them
        makes that many fewer blocks available."""
        return sum(1 for b in blocks if self._refs[b] == 0)

    def take(self, blocks: list[int]) -> None:
        """References matched blocks for a new sequence."""
        for b in blocks:
            if self._refs[b] == 0:
                del self._cached[b]
            self._refs[b] += 1

    def allocate(self) -> int:
        """A block for a sequence's next positions. The caller has made sure one is available."""
        if self._free:
            block = self._free.pop()
        else:
            block, _ = self._cached.popitem(last=False)  # least recently used
            del self._by_key[self._key[block]]
            self._key[block], self._id[block] = None, ROOT
        self._refs[block] = 1
        return block

    def seal(self, block: int, parent: int, tokens: list[int]) -> int:
        """Records that ``block`` is full with ``tokens`` after the block whose
        identity is ``parent``; returns this block's identity (the next one's parent).

        If an identical block is cached already (two requests computed the same
        prefix at once), that one stays the findable copy and this block is
        freed when its sequence ends."""
        if not self.prefix_caching:
            return ROOT
        key = (parent, tuple(tokens))
        existing = self._by_key.get(key)
        if existing is not None:
            return self._id[existing]
        self._id[block], self._key[block] = self._next_id, key
        self._next_id += 1
        self._by_key[key] = block
        return self._id[block]

    def identity(self, block: int) -> int:
        return self._id[block]

    def release(self, blocks: list[int]) -> None:
        """A sequence is done with its blocks: full ones with an identity stay
        cached (most recently used last); the rest become free."""
        for b in reversed(blocks):  # the prefix's end is evicted before its start
            self._refs[b] -= 1
            if self._refs[b] == 0:
                if self._key[b] is not None:
                    self._cached[b] = None
                else:
                    self._free.append(b)
