"""How much a hostile client slows everyone else: large bodies while a stream runs.

Starts `pycompat serve` (of this checkout, or of another one given by --repo,
to compare before and after a change), then:

1. one streaming chat that runs for the whole measurement (a few hundred
   tokens, end-of-turn tokens suppressed), recording the gap between chunks;
2. `GET /health` every 50 ms, recording its latency;
3. after a quiet second, BURST clients at once, each posting a chat body of
   SIZE MiB (one long user message: far more than the context holds).

Printed: /health latency p50 / p99 / max and the stream's largest gap, before
and during the burst; the large requests' statuses and times; the server's
peak RSS. Nothing here asserts: the figures go to benches/RESULTS.md.

Usage: .venv/bin/python benches/hostile.py [--burst 4] [--size-mb 7.9] [--repo PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

import local_server

MODEL = "smollm2-135m-instruct"


def start_server(repo: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """The server of the checkout at ``repo``."""
    return local_server.start_server(log, env={**os.environ, "PYTHONPATH": str(repo)}, cwd=repo)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def summary(values: list[float]) -> str:
    if not values:
        return "n/a"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return f"p50 {statistics.median(ordered) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms"


async def measure(base: str, burst: int, size_mb: float) -> dict:
    timeline: dict[str, list[tuple[float, float]]] = {"health": [], "gaps": []}
    burst_window = [0.0, 0.0]
    results = []
    stop = asyncio.Event()

    async def stream(client: httpx.AsyncClient) -> None:
        body = {"model": MODEL, "stream": True, "max_tokens": 1500, "temperature": 0.7, "seed": 1,
                "logit_bias": {"0": -100, "2": -100},
                "messages": [{"role": "user", "content": "Tell me a very long story about a lighthouse."}]}
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            last = None
            async for _ in r.aiter_lines():
                now = time.monotonic()
                if last is not None:
                    timeline["gaps"].append((now, now - last))
                last = now
                if stop.is_set():
                    break

    async def poll(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            t = time.monotonic()
            await client.get("/health")
            timeline["health"].append((t, time.monotonic() - t))
            await asyncio.sleep(0.05)

    # Encoded once, before the burst, and sent from threads: the client's own JSON
    # encoding must not stall the loop that times the stream and /health.
    big_body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "word " * int(size_mb * (1 << 20) / 5)}]}).encode()

    def big() -> None:
        t = time.monotonic()
        r = httpx.post(base + "/v1/chat/completions", content=big_body, headers={"content-type": "application/json"}, timeout=300)
        results.append((r.status_code, round(time.monotonic() - t, 2), r.json().get("error", {}).get("code") if r.status_code >= 400 else None))

    limits = httpx.Limits(max_connections=burst + 4)
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as client:
        tasks = [asyncio.create_task(stream(client)), asyncio.create_task(poll(client))]
        await asyncio.sleep(2.0)  # quiet: the stream alone
        burst_window[0] = time.monotonic()
        await asyncio.gather(*(asyncio.to_thread(big) for _ in range(burst)))
        burst_window[1] = time.monotonic()
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    def split(series):
        before = [v for t, v in series if t < burst_window[0]]
        during = [v for t, v in series if burst_window[0] <= t <= burst_window[1] + 0.2]
        return before, during

    health_before, health_during = split(timeline["health"])
    gaps_before, gaps_during = split(timeline["gaps"])
    return {
        "health_before": summary(health_before), "health_during": summary(health_during),
        "stream_gap_before_max_ms": round(max(gaps_before, default=0) * 1000),
        "stream_gap_during_max_ms": round(max(gaps_during, default=0) * 1000),
        "burst_seconds": round(burst_window[1] - burst_window[0], 2),
        "big_requests": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--burst", type=int, default=4)
    parser.add_argument("--size-mb", type=float, default=7.9)
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, base = start_server(args.repo.resolve(), Path(tmp) / "serve.log")
        try:
            httpx.post(base + "/v1/chat/completions", timeout=60,
                       json={"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]})  # warm-up
            result = asyncio.run(measure(base, args.burst, args.size_mb))
            result["server_peak_rss_mib"] = round(peak_rss_mib(proc.pid))
            result["server_alive"] = proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(10)
    print(json.dumps({"repo": str(args.repo), "burst": args.burst, "size_mb": args.size_mb, **result}, indent=2))


if __name__ == "__main__":
    main()
