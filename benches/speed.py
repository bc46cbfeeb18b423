"""Single-request speed of pycompat against llama.cpp, side by side in one run.

For each GGUF file (the default Q4_1 model, and a Q8_0 copy of it made with
llama.cpp's own quantizer), with the same prompt and the same thread count:

- in process: pycompat's Python API against `llama_cpp.Llama`, each engine in
  its own worker process (so each has its own peak RSS);
- over HTTP, streaming /v1/completions: `pycompat serve` against llama.cpp's
  C++ `llama-server` and against `python -m llama_cpp.server`.

Engines take turns within each repetition, so drift in the machine's load hits
all of them. Printed: medians of prefill tokens/s (a 512-token prompt), decode
tokens/s (256 greedy tokens), time to first token, peak RSS, and the physical
bound on decode: memory bandwidth (a large copy) over the bytes of weights read
per token, with each engine's decode as a percentage of it.

Usage: ./scripts/dev bench [--reps N] [--prompt-tokens N] [--decode N]
       [--llama-server PATH] [--only in-process|http]
(`benches/build_llama_server.sh` builds llama-server from the sources vendored
in the llama-cpp-python sdist; without it that column is left out.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_LLAMA_SERVER = HERE / ".peer" / "build" / "bin" / "llama-server"
WORDS = "the quick brown fox jumps over the lazy dog while a small bird sings in the tall green tree and"


# ---------------------------------------------------------------- machine


def cpu_description() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    simd = [f for f in ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni") if f in flags]
    return f"{name}; {len(os.sched_getaffinity(0))} cores available; SIMD flags: {' '.join(simd)}"


def memory_bandwidth(threads: int, mib: int = 256, reps: int = 5) -> float:
    """Bytes per second moved by a large copy (read + write counted), on `threads` threads."""
    src = np.ones(mib << 18, np.float32)  # mib MiB
    dst = np.empty_like(src)
    parts = np.array_split(np.arange(len(src)), threads)
    spans = [(p[0], p[-1] + 1) for p in parts]

    def copy(a: int, b: int) -> None:
        np.copyto(dst[a:b], src[a:b])  # numpy releases the GIL for the copy

    best = float("inf")
    for _ in range(reps):
        workers = [threading.Thread(target=copy, args=span) for span in spans]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best


def weight_bytes_per_token(path: Path) -> int:
    """Bytes of weights a decode step reads: every tensor once (the tied
    embedding is the LM head, read whole), less the embedding rows not looked up."""
    from pycompat.loading.gguf import read_gguf

    gguf = read_gguf(path)
    try:
        total = sum(t.data.nbytes for t in gguf.tensors.values())
        if "output.weight" in gguf.tensors:  # untied: the embedding is only looked up
            embed = gguf.tensors["token_embd.weight"]
            total -= embed.data.nbytes - embed.data.nbytes // embed.shape[0]
        return total
    finally:
        gguf.close()


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_q8_0(source: Path, target: Path) -> Path:
    """A Q8_0 copy of `source`, written by llama.cpp's quantizer (so the peer reads it as its own)."""
    if target.exists():
        return target
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    params.allow_requantize = True
    params.nthread = len(os.sched_getaffinity(0))
    target.parent.mkdir(parents=True, exist_ok=True)  # llama.cpp does not make it, and fails with "iostream error"
    tmp = target.with_suffix(".tmp")
    if llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), params) != 0:
        raise SystemExit(f"llama.cpp could not quantize {source}")
    tmp.rename(target)
    return target


# ---------------------------------------------------------------- in process


def worker_main(engine: str, model: str, threads: int) -> None:
    """Runs requests from stdin (one JSON line each), answers timings on stdout."""
    if engine == "pycompat":
        from pycompat import _kernel
        from pycompat.engine.runner import SoloSequence
        from pycompat.loading.load import load_model

        _kernel.set_threads(threads)
        m = load_model(model, context_length=2048)

        def run(prompt: list[int], n_decode: int) -> dict:
            seq, sampler = SoloSequence(m.kernel), _kernel.Sampler(temperature=0.0)
            t0 = time.perf_counter()
            token = seq.step(prompt, sampler)
            t1 = time.perf_counter()
            for _ in range(n_decode - 1):
                token = seq.step([token], sampler)
            return {"ttft": t1 - t0, "decode": time.perf_counter() - t1}
    else:
        import llama_cpp

        llama = llama_cpp.Llama(model_path=model, n_ctx=2048, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False)
        n_vocab = llama.n_vocab()

        def next_token() -> int:  # greedy, from the logits of the last evaluated token
            return int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llama.ctx, -1), shape=(n_vocab,))))

        def run(prompt: list[int], n_decode: int) -> dict:
            llama.reset()
            t0 = time.perf_counter()
            llama.eval(prompt)
            token = next_token()
            t1 = time.perf_counter()
            for _ in range(n_decode - 1):
                llama.eval([token])
                token = next_token()
            return {"ttft": t1 - t0, "decode": time.perf_counter() - t1}

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        print(json.dumps(run(req["prompt"], req["decode"])), flush=True)


class Worker:
    def __init__(self, engine: str, model: Path, threads: int):
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", engine, "--model", str(model), "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert json.loads(self.proc.stdout.readline())["ready"]

    def run(self, prompt: list[int], n_decode: int) -> dict:
        self.proc.stdin.write(json.dumps({"prompt": prompt, "decode": n_decode}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> float:
        rss = peak_rss_mib(self.proc.pid)
        self.proc.stdin.close()
        self.proc.wait()
        return rss


def settle() -> None:
    """A pause between engines: the one that ran last may still have threads
    spinning for work (ours for 0.2 ms, OpenMP's and ggml's for longer), which
    would take cores from the next."""
    time.sleep(1.0)


def bench_in_process(model: Path, prompts: list[list[int]], n_decode: int, threads: int) -> dict[str, dict]:
    workers = {"pycompat": Worker("pycompat", model, threads), "llama.cpp (llama_cpp.Llama)": Worker("llama.cpp", model, threads)}
    runs = {name: [] for name in workers}
    for prompt in prompts:
        for name, w in workers.items():
            settle()
            r = w.run(prompt, n_decode)
            runs[name].append({"prefill": len(prompt) / r["ttft"], "decode": (n_decode - 1) / r["decode"], "ttft": r["ttft"]})
    return {name: summarize(runs[name], workers[name].close()) for name in workers}


# ---------------------------------------------------------------- over HTTP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name: str, argv: list[str], port: int, extra: dict):
        self.name, self.port, self.extra = name, port, extra
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import httpx

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{name} exited at start-up: {' '.join(argv)}")
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                if r.status_code == 200:
                    self.model_id = r.json()["data"][0]["id"]  # each server names the model its own way
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"{name} did not come up")

    def stream(self, prompt: str, n_decode: int, prompt_tokens: int | None = None) -> dict:
        """One streaming completion; times its first and last tokens."""
        import httpx

        body = {"model": self.model_id, "prompt": prompt, "max_tokens": n_decode, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}, **self.extra}
        t0 = time.perf_counter()
        first = last = None
        chunks, usage = 0, None
        with httpx.stream("POST", f"http://127.0.0.1:{self.port}/v1/completions", json=body, timeout=600) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if event.get("usage"):
                    usage = event["usage"]
                if event.get("choices") and event["choices"][0].get("text"):
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    chunks += 1
        completion = usage["completion_tokens"] if usage else chunks
        return {"ttft": first - t0, "decode_s": last - first, "completion": completion,
                "prompt_tokens": usage["prompt_tokens"] if usage else prompt_tokens}

    def close(self) -> float:
        rss = peak_rss_mib(self.proc.pid)
        self.proc.terminate()
        self.proc.wait(30)
        return rss


def start_servers(model: Path, threads: int, llama_server: Path | None) -> list[Server]:
    servers = []
    port = free_port()
    servers.append(Server("pycompat serve", [str(Path(sys.executable).parent / "pycompat"), "serve", "--model", str(model), "--port", str(port),
                                             "--threads", str(threads), "--context-length", "2048", "--log-level", "warning", "--state", "none"], port, {}))
    if llama_server is not None:
        port = free_port()
        # cache_prompt off: each request must prefill its whole prompt, as ours does.
        servers.append(Server("llama.cpp llama-server", [str(llama_server), "-m", str(model), "--port", str(port), "-t", str(threads),
                                                         "-tb", str(threads), "-c", "2048", "-np", "1", "-b", "512", "--no-cache-prompt", "--no-webui"],
                              port, {"cache_prompt": False}))
    port = free_port()
    # llama_cpp.server applies a repeat penalty of 1.1 unless told otherwise: off, so that
    # greedy decoding yields the same tokens as the other two.
    servers.append(Server("python -m llama_cpp.server", [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--port", str(port),
                                                         "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", "2048",
                                                         "--n_batch", "512"], port, {"repeat_penalty": 1.0}))
    return servers


def bench_http(model: Path, texts: list[str], n_prompt: int, n_decode: int, threads: int, llama_server: Path | None) -> dict[str, dict]:
    servers = start_servers(model, threads, llama_server)
    runs = {s.name: [] for s in servers}
    try:
        for s in servers:  # a warm-up request each, not timed
            s.stream(texts[0][:200], 4)
        for text in texts:
            for s in servers:
                settle()
                # Servers that report no usage while streaming get the prompt's length from our tokenizer
                # (it agrees with llama.cpp's on this model: tests/test_tokenizer.py).
                r = s.stream(text, n_decode, n_prompt)
                runs[s.name].append({"prefill": (r["prompt_tokens"] or 0) / r["ttft"], "decode": (r["completion"] - 1) / r["decode_s"],
                                     "ttft": r["ttft"], "completion": r["completion"], "prompt_tokens": r["prompt_tokens"]})
    finally:
        rss = {s.name: s.close() for s in servers}
    return {name: summarize(rs, rss[name]) for name, rs in runs.items()}


# ---------------------------------------------------------------- report


def summarize(runs: list[dict], rss: float) -> dict:
    out = {k: statistics.median(r[k] for r in runs) for k in ("prefill", "decode", "ttft")}
    out["rss"] = rss
    out["completion"] = runs[0].get("completion")
    out["prompt_tokens"] = runs[0].get("prompt_tokens")
    return out


def table(title: str, results: dict[str, dict], ours: str, bound: float) -> str:
    lines = [f"**{title}**", "", "| engine | prefill tok/s | decode tok/s | TTFT ms | peak RSS MiB | decode % of bound | pycompat ÷ this, prefill | pycompat ÷ this, decode |",
             "|---|---|---|---|---|---|---|---|"]
    mine = results[ours]
    for name, r in results.items():
        ratio_p = mine["prefill"] / r["prefill"] if r["prefill"] else float("nan")
        ratio_d = mine["decode"] / r["decode"]
        lines.append(f"| {name} | {r['prefill']:.1f} | {r['decode']:.1f} | {1000 * r['ttft']:.0f} | {r['rss']:.0f} | "
                     f"{100 * r['decode'] / bound:.0f}% | {'' if name == ours else f'{ratio_p:.2f}'} | {'' if name == ours else f'{ratio_d:.2f}'} |")
    extra = [f"{n}: {r['prompt_tokens']} prompt + {r['completion']} completion tokens" for n, r in results.items() if r.get("completion")]
    if extra:
        lines += ["", "Tokens per request: " + "; ".join(extra)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--decode", type=int, default=256)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--llama-server", type=Path, default=DEFAULT_LLAMA_SERVER)
    parser.add_argument("--only", choices=["in-process", "http"])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker_main(args.worker, args.model, args.threads)

    from llama_cpp import llama_print_system_info

    from pycompat.loading.load import default_model_path, load_model

    q4_1 = default_model_path()
    q8_0 = make_q8_0(q4_1, HERE / ".peer" / "SmolLM2-135M-Instruct.Q8_0.gguf")
    tokenizer = load_model(q4_1).tokenizer  # the same vocabulary in both files
    base = tokenizer.encode(" ".join([WORDS] * 60))[: args.prompt_tokens - 4]
    # Each repetition's prompt starts differently, so no engine can reuse a cached prefix.
    prompts = [tokenizer.encode(f"Take {rep}:") [:4] + base for rep in range(args.reps)]
    prompts = [p[: args.prompt_tokens] for p in prompts]
    texts = [tokenizer.decode(p) for p in prompts]
    llama_server = args.llama_server if args.llama_server.exists() else None

    bandwidth = memory_bandwidth(args.threads)
    print(f"machine: {cpu_description()}; {platform.platform()}")
    print(f"llama.cpp (llama-cpp-python 0.3.36) build: {llama_print_system_info().decode().strip()}")
    print(f"memory bandwidth (copy of 256 MiB on {args.threads} threads, read + write): {bandwidth / 1e9:.1f} GB/s")
    print(f"command: {' '.join(sys.argv)}; {args.reps} repetitions, medians; {args.threads} threads; "
          f"prompt {len(prompts[0])} tokens, {args.decode} greedy tokens\n")
    if llama_server is None:
        print(f"(llama-server not found at {args.llama_server}: run benches/build_llama_server.sh; its column is left out)\n")

    for model in (q4_1, q8_0):
        per_token = weight_bytes_per_token(model)
        bound = bandwidth / per_token
        print(f"### {model.name}: {per_token / 1e6:.1f} MB of weights per token; decode bound {bound:.0f} tok/s\n")
        if args.only != "http":
            print(table("in process", bench_in_process(model, prompts, args.decode, args.threads), "pycompat", bound) + "\n", flush=True)
        if args.only != "in-process":
            print(table("over HTTP (streaming /v1/completions)", bench_http(model, texts, len(prompts[0]), args.decode, args.threads, llama_server),
                        "pycompat serve", bound) + "\n", flush=True)


if __name__ == "__main__":
    main()
