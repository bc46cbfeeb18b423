"""The engine's settings (the `serve` command's engine options)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineConfig:
    kv_cache_mb: float = 1024.0  # cache budget; pages become resident as blocks are first used
    block_size: int = 16  # positions per cache block
    max_queue: int = 256  # requests waiting beyond the running ones; more get a 429
    step_tokens: int = 512  # most tokens one step computes (decode tokens + prompt chunks)
    prefix_caching: bool = True
    # Most tokens one sequence generates, whatever the request asks (--max-tokens-limit); None: the context is the bound.
    max_tokens_limit: int | None = None
