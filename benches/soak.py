"""A soak: many clients for many minutes, checking that nothing leaks, stalls or goes wrong.

    ./scripts/dev bench-soak [--minutes 10] [--clients 64] [--hang-up 0.2] [--max-tokens 32] [--seed 1]

Starts `pycompat serve` (the bundled model; no state kept), then runs
``--clients`` concurrent clients for ``--minutes``, each on one kept-alive
connection, each sending streaming chat completions one after another. Every
request is one of a fixed set of seeded prompts whose answers are computed
first, one at a time, before the load starts; under load every answer that runs
to its end must be the same text (batching never changes an answer). A share
of the requests (``--hang-up``) is abandoned at a random point of its stream,
as a user closing a tab does. ``GET /health`` is polled every second.

Reported: requests completed and abandoned, errors (any non-200, a stream that
ends without ``[DONE]``, a connection failure), wrong answers, output tokens/s,
TTFT p50/p99, ``/health`` latency p50/p99, the server's RSS at the start of the
load (after its first minute, once warm), the middle and the end, and its KV
cache once the clients are gone: every block must be free or cached (none
still held by a request). Never run by CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from local_server import start_server

MODEL = "smollm2-135m-instruct"
TOPICS = ["the sea", "a lighthouse", "bread", "winter", "a violin", "bees", "a train", "the moon", "rain", "a garden",
          "chess", "a bicycle", "paper", "a river", "mountains", "coffee"]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@dataclass
class Tally:
    completed: int = 0
    abandoned: int = 0
    errors: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    tokens: int = 0
    ttft: list[float] = field(default_factory=list)
    health: list[float] = field(default_factory=list)


def body(prompt: int, max_tokens: int) -> dict:
    return {"model": MODEL, "stream": True, "max_tokens": max_tokens, "temperature": 0.8, "seed": 1000 + prompt,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": f"Write a short poem about {TOPICS[prompt]}."}]}


async def stream(client: httpx.AsyncClient, request: dict, hang_up_after: int | None, tally: Tally | None) -> str | None:
    """One streamed chat completion: its text, or None when abandoned. Errors are counted in ``tally`` (raised without one)."""
    started = time.perf_counter()
    pieces, chunks, done, usage = [], 0, False, None
    async with client.stream("POST", "/chat/completions", json=request) as r:
        if r.status_code != 200:
            raise RuntimeError(f"status {r.status_code}: {(await r.aread())[:200]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(f"error event: {event['error'].get('message')}")
            if event.get("usage"):
                usage = event["usage"]
            for choice in event.get("choices", []):
                text = choice["delta"].get("content")
                if text:
                    if not pieces and tally is not None:
                        tally.ttft.append(time.perf_counter() - started)
                    pieces.append(text)
                    chunks += 1
                    if hang_up_after is not None and chunks >= hang_up_after:
                        return None  # leaving the block closes the connection's response mid-stream
    if not done:
        raise RuntimeError("the stream ended without [DONE]")
    if tally is not None and usage:
        tally.tokens += usage["completion_tokens"]
    return "".join(pieces)


async def client_loop(index: int, root: str, answers: list[str], args, deadline: float, tally: Tally) -> None:
    rng = random.Random(args.seed * 1000 + index)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)  # one kept-alive connection per client
    async with httpx.AsyncClient(base_url=root + "/v1", timeout=300, limits=limits) as client:
        while time.monotonic() < deadline:
            prompt = rng.randrange(len(TOPICS))
            hang_up = rng.randrange(1, args.max_tokens) if rng.random() < args.hang_up else None
            try:
                text = await stream(client, body(prompt, args.max_tokens), hang_up, tally)
            except Exception as e:
                tally.errors.append(f"client {index}: {type(e).__name__}: {e}"[:300])
                continue
            if text is None:
                tally.abandoned += 1
            elif text != answers[prompt]:
                tally.wrong.append(f"prompt {prompt}: {text[:60]!r} != {answers[prompt][:60]!r}")
            else:
                tally.completed += 1


async def poll_health(root: str, deadline: float, tally: Tally) -> None:
    async with httpx.AsyncClient(base_url=root, timeout=60) as client:
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            (await client.get("/health")).raise_for_status()
            tally.health.append(time.perf_counter() - t0)
            await asyncio.sleep(1)


async def watch_rss(pid: int, seconds: float, samples: dict) -> None:
    """RSS after the first minute (warm), at the middle and at the end."""
    warm_at = min(60.0, seconds / 4)
    await asyncio.sleep(warm_at)
    samples["start"] = rss_mb(pid)
    await asyncio.sleep(seconds / 2 - warm_at)
    samples["middle"] = rss_mb(pid)


async def soak(root: str, pid: int, args) -> tuple[Tally, dict, dict, float]:
    async with httpx.AsyncClient(base_url=root + "/v1", timeout=300) as client:
        answers = [await stream(client, body(p, args.max_tokens), None, None) for p in range(len(TOPICS))]
    tally, samples = Tally(), {}
    seconds = args.minutes * 60
    started = time.monotonic()
    deadline = started + seconds
    await asyncio.gather(poll_health(root, deadline, tally), watch_rss(pid, seconds, samples),
                         *(client_loop(i, root, answers, args, deadline, tally) for i in range(args.clients)))
    elapsed = time.monotonic() - started
    samples["end"] = rss_mb(pid)
    await asyncio.sleep(1)  # abandoned streams are noticed at their next token
    async with httpx.AsyncClient(base_url=root, timeout=60) as client:
        health = (await client.get("/health")).json()
    return tally, samples, health, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--hang-up", type=float, default=0.2, help="share of requests abandoned mid-stream")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    log = Path(tempfile.mkdtemp()) / "serve.log"
    proc, root = start_server(log)
    try:
        tally, rss, health, elapsed = asyncio.run(soak(root, proc.pid, args))
    finally:
        proc.terminate()
        proc.wait(30)
    kv = health.get("kv_cache", {})
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; {args.clients} clients for "
          f"{elapsed / 60:.1f} min, {args.hang_up:.0%} hung up, {args.max_tokens} tokens each; server log {log}")
    print("| measure | value |\n|---|---|")
    rows = [
        ("requests completed (answer checked)", tally.completed),
        ("requests abandoned mid-stream", tally.abandoned),
        ("errors", len(tally.errors)),
        ("wrong answers", len(tally.wrong)),
        ("output tokens/s (completed streams)", f"{tally.tokens / elapsed:.1f}"),
        ("TTFT p50 / p99, ms", f"{percentile(tally.ttft, 50) * 1000:.0f} / {percentile(tally.ttft, 99) * 1000:.0f}"),
        ("/health p50 / p99, ms", f"{percentile(tally.health, 50) * 1000:.1f} / {percentile(tally.health, 99) * 1000:.1f}"),
        ("RSS warm / middle / end, MiB", f"{rss.get('start', float('nan')):.0f} / {rss.get('middle', float('nan')):.0f} / {rss['end']:.0f}"),
        ("RSS growth after warm-up", f"{(rss['end'] / rss['start'] - 1) * 100:+.1f}%" if "start" in rss else "n/a"),
        ("KV blocks at the end: used / cached / free / total",
         f"{kv.get('blocks_used')} / {kv.get('blocks_cached')} / {kv.get('blocks_free')} / {kv.get('blocks_total')}"),
        ("requests still generating / queued at the end", f"{health.get('generating')} / {health.get('queued')}"),
    ]
    for name, value in rows:
        print(f"| {name} | {value} |")
    for kind, problems in (("errors", tally.errors), ("wrong answers", tally.wrong)):
        if problems:
            print(f"\n{kind} (first 10):\n" + "\n".join(problems[:10]))
    if tally.ttft:
        print(f"\nmean TTFT {statistics.mean(tally.ttft) * 1000:.0f} ms over {len(tally.ttft)} streams")


if __name__ == "__main__":
    main()
