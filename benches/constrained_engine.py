"""What a JSON schema costs the engine itself: the bundled SmolLM2 in this
process (no HTTP, no client on the same cores), bursts of N sequences of 128
tokens each, free text and constrained by benches/constrained.py's PLAN_SCHEMA
taking turns (their order swapped every repetition). The end of turn is
suppressed with logit_bias, as in constrained.py, so both run to max_tokens.

Usage: .venv/bin/python benches/constrained_engine.py [--n 1,16] [--reps 6]
Prints tokens/s for each burst and the median of the per-repetition ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import trio

sys.path.insert(0, os.path.dirname(__file__))
from constrained import PLAN_SCHEMA  # noqa: E402

from pycompat.api import structured  # noqa: E402
from pycompat.engine.engine import Engine  # noqa: E402
from pycompat.engine.request import Finished, SamplingOptions, start  # noqa: E402
from pycompat.loading.load import load_model  # noqa: E402

MAX_TOKENS = 128


async def burst(engine: Engine, prompts: list[list[int]], opts: SamplingOptions) -> float:
    """Generated tokens per second of one burst of ``prompts``, all at once."""
    generations = start(engine, prompts, opts)
    tokens, t0 = 0, time.perf_counter()

    async def drain(generation) -> None:
        nonlocal tokens
        async for event in generation.events():
            if isinstance(event, Finished):
                tokens += event.completion_tokens

    async with trio.open_nursery() as nursery:
        for g in generations:
            nursery.start_soon(drain, g)
    return tokens / (time.perf_counter() - t0)


async def main(sizes: list[int], reps: int) -> None:
    model = load_model()
    schema = structured.json_schema(PLAN_SCHEMA, "response_format")
    grammar = model.grammars.compile(schema.kind, schema.source)
    tk = model.tokenizer
    prompts = [tk.encode(model.chat_template.render([{"role": "user", "content": f"Plan activity number {i}: something fun."}]))
               for i in range(max(sizes))]
    no_end = {t: -100.0 for t in tk.stop_ids}
    engine = Engine(model)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        for n in sizes:
            rates: dict[str, list[float]] = {"free": [], "schema": []}
            for rep in range(reps):
                for kind in (("free", "schema") if rep % 2 == 0 else ("schema", "free")):
                    opts = SamplingOptions(max_tokens=MAX_TOKENS, temperature=0.7, top_p=0.9, seed=rep, logit_bias=no_end,
                                           grammar=grammar if kind == "schema" else None)
                    rates[kind].append(await burst(engine, prompts[:n], opts))
            ratio = statistics.median(s / f for s, f in zip(rates["schema"], rates["free"]))
            print(f"N={n}: free {[round(r, 1) for r in rates['free']]} tok/s, schema {[round(r, 1) for r in rates['schema']]} tok/s; "
                  f"median free {statistics.median(rates['free']):.1f}, schema {statistics.median(rates['schema']):.1f}, "
                  f"schema / free {ratio:.3f}", flush=True)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", default="1,16", help="burst sizes, comma-separated")
    parser.add_argument("--reps", type=int, default=6)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}")
    trio.run(main, [int(x) for x in args.n.split(",")], args.reps)
    print(f"load average after: {os.getloadavg()}")
