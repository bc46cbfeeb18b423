"""Single-stream speed, in process: pycompat's kernel vs llama.cpp (llama-cpp-python)
on the same GGUF, same prompt, same thread count, alternating, several repetitions.

Prints the median prefill tokens/s, decode tokens/s (greedy) and their ratios.
Usage: ./scripts/dev bench [--reps N] [--decode N] [--prompt-tokens N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

from pycompat import _kernel
from pycompat.loading.load import default_model_path, load_model

WORDS = ("the quick brown fox jumps over the lazy dog while a small bird sings in the tall green tree " * 200).split()


def prompt_of(tokenizer, n: int) -> list[int]:
    ids = tokenizer.encode(" ".join(WORDS))
    return ids[:n]


def run_pycompat(model, prompt: list[int], n_decode: int) -> tuple[float, float]:
    seq, sampler = model.kernel.new_sequence(), _kernel.Sampler(temperature=0.0)
    t0 = time.perf_counter()
    (token,) = model.kernel.step([(seq, prompt, sampler)])
    t1 = time.perf_counter()
    for _ in range(n_decode - 1):
        (token,) = model.kernel.step([(seq, [token], sampler)])
    t2 = time.perf_counter()
    return len(prompt) / (t1 - t0), (n_decode - 1) / (t2 - t1)


def run_llama_cpp(llama, prompt: list[int], n_decode: int) -> tuple[float, float]:
    llama.reset()
    t0 = time.perf_counter()
    llama.eval(prompt)
    t1 = time.perf_counter()
    token = int(llama.scores[len(prompt) - 1].argmax())
    for _ in range(n_decode - 1):
        llama.eval([token])
        token = int(llama.scores[llama.n_tokens - 1].argmax())
    t2 = time.perf_counter()
    return len(prompt) / (t1 - t0), (n_decode - 1) / (t2 - t1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--decode", type=int, default=64)
    args = parser.parse_args()

    from llama_cpp import Llama, llama_print_system_info

    threads = len(os.sched_getaffinity(0))
    path = default_model_path()
    model = load_model(path, context_length=2048)
    llama = Llama(model_path=str(path), n_ctx=2048, n_batch=512, n_threads=threads, logits_all=False, verbose=False)
    prompt = prompt_of(model.tokenizer, args.prompt_tokens)

    results = {"pycompat": [], "llama.cpp": []}
    for _ in range(args.reps):  # alternate, so drift in machine load hits both
        results["pycompat"].append(run_pycompat(model, prompt, args.decode))
        results["llama.cpp"].append(run_llama_cpp(llama, prompt, args.decode))

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    print(f"machine: {cpu}, {threads} threads; {platform.platform()}")
    print(f"llama.cpp build: {llama_print_system_info().decode().strip()}")
    print(f"model: {path.name}; prompt {len(prompt)} tokens; {args.decode} greedy tokens; {args.reps} repetitions; medians\n")
    print("| engine | prefill tok/s | decode tok/s |")
    print("|---|---|---|")
    med = {name: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs)) for name, rs in results.items()}
    for name, (pre, dec) in med.items():
        print(f"| {name} | {pre:.1f} | {dec:.1f} |")
    print(f"| ratio pycompat / llama.cpp | {med['pycompat'][0] / med['llama.cpp'][0]:.2f} | {med['pycompat'][1] / med['llama.cpp'][1]:.2f} |")


if __name__ == "__main__":
    main()
