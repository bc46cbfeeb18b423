"""What `n` choices cost against one: the choices of a prompt fork after it,
sharing its cache blocks, so `n=8` should cost about one prompt plus eight
answers, not eight prompts.

    .venv/bin/python benches/choices.py [--prompt-tokens 1000] [--max-tokens 16] [--n 8] [--reps 3]

Starts `pycompat serve` (default model), then times /v1/completions with a
long prompt at n=1 and n=N, alternating, after one warm-up each; prefix
caching is off, so every request computes its prompt (only the choices of one
request share it). Prints medians and the ratio, with what N separate
requests of n=1 would take for comparison.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from local_server import start_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt-tokens", type=int, default=1000)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    log = Path(tempfile.mkdtemp()) / "serve.log"
    proc, root = start_server(log, "--no-prefix-caching")
    try:
        client = httpx.Client(base_url=root + "/v1", timeout=600)
        words = " ".join(f"word{i % 97}" for i in range(args.prompt_tokens))  # about 2 tokens a word

        def prompt_of(tokens: int) -> str:
            text = words
            while True:  # trim to the asked number of tokens, as the server counts them
                r = client.post("/completions", json={"model": "smollm2-135m-instruct", "prompt": text, "max_tokens": 0}).json()
                if "usage" not in r:  # longer than the context
                    text = text[: len(text) // 2]
                elif r["usage"]["prompt_tokens"] <= tokens:
                    return text
                else:
                    text = text[: int(len(text) * tokens / r["usage"]["prompt_tokens"]) - 1]

        prompt = prompt_of(args.prompt_tokens)
        body = {"model": "smollm2-135m-instruct", "prompt": prompt, "max_tokens": args.max_tokens, "temperature": 0.8,
                "seed": 1, "ignore_eos": True}

        def timed(n: int) -> tuple[float, dict]:
            t0 = time.perf_counter()
            r = client.post("/completions", json={**body, "n": n}).json()
            return time.perf_counter() - t0, r["usage"]

        timed(1), timed(args.n)  # warm-up
        one, many = [], []
        for _ in range(args.reps):
            one.append(timed(1)[0])
            t, usage = timed(args.n)
            many.append(t)
        a, b = statistics.median(one), statistics.median(many)
        print(f"machine: {os.cpu_count()} CPUs; command: benches/choices.py --prompt-tokens {args.prompt_tokens} "
              f"--max-tokens {args.max_tokens} --n {args.n} --reps {args.reps}")
        print(f"prompt tokens: {usage['prompt_tokens']}; completion tokens at n={args.n}: {usage['completion_tokens']}")
        print(f"n=1: {a:.2f} s (median of {args.reps}); n={args.n}: {b:.2f} s; ratio {b / a:.2f}; "
              f"{args.n} separate n=1 requests one after another: {args.n * a:.2f} s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
