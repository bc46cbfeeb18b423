"""A fixed kernel workload to run under a profiler, e.g.

    perf record -g .venv/bin/python benches/profile.py decode --context 512 --steps 1000
    perf report --no-children --sort symbol

prefill: `--runs` prompts of `--context` tokens, each in a fresh sequence.
decode: one prompt of `--context` tokens, then `--steps` greedy tokens.
Prints the rates it saw (loading is outside the timed part, not the profile).
"""

from __future__ import annotations

import argparse
import time

from pycompat import _kernel
from pycompat.engine.runner import SoloSequence
from pycompat.loading.load import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=["prefill", "decode"])
    parser.add_argument("--model", help="GGUF file or model directory (default: the bundled SmolLM2)")
    parser.add_argument("--context", type=int, default=512, help="prompt tokens (default 512)")
    parser.add_argument("--steps", type=int, default=1000, help="decode: tokens to generate (default 1000)")
    parser.add_argument("--runs", type=int, default=5, help="prefill: prompts to run (default 5)")
    args = parser.parse_args()

    model = load_model(args.model, context_length=2048)
    prompt = [1000 + i % 40000 for i in range(args.context)]
    greedy = _kernel.Sampler(temperature=0.0)
    if args.workload == "prefill":
        for _ in range(args.runs):
            t0 = time.perf_counter()
            SoloSequence(model.kernel).step(prompt, greedy)
            print(f"prefill: {args.context / (time.perf_counter() - t0):.1f} tok/s")
        return
    seq = SoloSequence(model.kernel)
    token = seq.step(prompt, greedy)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        token = seq.step([token], greedy)
    print(f"decode: {args.steps / (time.perf_counter() - t0):.1f} tok/s from context {args.context}")


if __name__ == "__main__":
    main()
