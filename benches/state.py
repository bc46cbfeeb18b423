"""What keeping state costs a response: the latency of a stored response
(`store: true`, its body and input items committed to SQLite, synced, before
the last byte) against the same response unstored, and a continuation by
`previous_response_id` against sending the whole history again.

    ./scripts/dev bench-state [--requests 200] [--concurrency 1 16] [--max-output-tokens 4]

Starts `pycompat serve` on a fresh --state file in a temporary directory,
then, at each concurrency, sends the same short request (greedy, a few output
tokens, so the model's time does not drown the storage's) stored and unstored,
alternating batch by batch after a warm-up, and prints p50/p99 of each and
the difference. The store's own write time is measured too, in process
(SQLiteStore.save of a response body and its input item, synced), so the
added latency can be told apart from noise. Nothing to compare with: no peer
keeps responses (llama.cpp's server and Ollama keep nothing; vLLM's
in-memory store survives no restart).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import trio

from local_server import start_server

MODEL = "smollm2-135m-instruct"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def timed_batch(client: httpx.AsyncClient, body: dict, concurrency: int) -> list[float]:
    async def one() -> float:
        t0 = time.perf_counter()
        r = await client.post("/responses", json=body)
        r.raise_for_status()
        return time.perf_counter() - t0

    return list(await asyncio.gather(*(one() for _ in range(concurrency))))


async def http_latencies(root: str, requests: int, concurrency: int, max_tokens: int) -> dict[str, list[float]]:
    body = {"model": MODEL, "input": "Reply with one word: hello.", "max_output_tokens": max_tokens, "temperature": 0}
    out: dict[str, list[float]] = {"stored": [], "unstored": []}
    async with httpx.AsyncClient(base_url=root + "/v1", timeout=600) as client:
        for store in (True, False):  # warm-up
            await timed_batch(client, {**body, "store": store}, concurrency)
        while len(out["stored"]) < requests:
            for store in (True, False):
                out["stored" if store else "unstored"] += await timed_batch(client, {**body, "store": store}, concurrency)
    return out


async def continuation_latencies(root: str, turns: int, max_tokens: int) -> dict[str, list[float]]:
    """Two conversations grown turn by turn, one sent by previous_response_id, the
    other whole each time (unstored). They open differently, so neither finds the
    other's turns in the prefix cache; each finds its own earlier turns there."""
    out: dict[str, list[float]] = {"previous_response_id": [], "whole history": []}
    async with httpx.AsyncClient(base_url=root + "/v1", timeout=600) as client:
        previous, history = None, []
        for turn in range(turns):
            def ask(who: str) -> dict:
                opening = f"I am {who}. " if turn == 0 else ""
                return {"role": "user", "content": f"{opening}Question {turn}: name a colour."}

            t0 = time.perf_counter()
            r = (await client.post("/responses", json={"model": MODEL, "input": [ask("Ada")], "previous_response_id": previous,
                                                       "max_output_tokens": max_tokens, "temperature": 0})).json()
            out["previous_response_id"].append(time.perf_counter() - t0)
            previous = r["id"]
            t0 = time.perf_counter()
            whole = (await client.post("/responses", json={"model": MODEL, "input": [*history, ask("Bob")], "store": False,
                                                           "max_output_tokens": max_tokens, "temperature": 0})).json()
            out["whole history"].append(time.perf_counter() - t0)
            history += [ask("Bob"), {"role": "assistant", "content": whole["output"][0]["content"][0]["text"]}]
    return out


def store_write_latencies(directory: Path, writes: int) -> list[float]:
    """SQLiteStore.save of a typical stored response (body + one input item), synced, in process."""
    from pycompat.state.sqlite import SQLiteStore
    from pycompat.state.store import RESPONSE, Item, Record

    store = SQLiteStore.open(directory / "write-bench.sqlite3")
    body = {"object": "response", "output": [{"type": "message", "content": [{"type": "output_text", "text": "Hello there!"}]}],
            "usage": {"input_tokens": 30, "output_tokens": 4}, "tools": [], "text": {"format": {"type": "text"}}}
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Reply with one word: hello."}]}
    times = []

    async def run() -> None:
        for i in range(writes):
            t0 = time.perf_counter()
            await store.save(Record(RESPONSE, f"resp_{i}", int(time.time()), {"id": f"resp_{i}", **body}, {"k": "v"}),
                             [Item(f"msg_{i}", {"id": f"msg_{i}", **item})])
            times.append(time.perf_counter() - t0)
        await store.close()

    trio.run(run)
    return times


def row(name: str, values: list[float]) -> str:
    return f"| {name} | {len(values)} | {percentile(values, 50) * 1000:.1f} | {percentile(values, 99) * 1000:.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests of each kind, per concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--max-output-tokens", type=int, default=4)
    parser.add_argument("--turns", type=int, default=12, help="turns of the continuation comparison")
    args = parser.parse_args()

    directory = Path(tempfile.mkdtemp())
    print(f"machine: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores; state in {directory}")
    writes = store_write_latencies(directory, 500)
    print("\nSQLiteStore.save of one response (WAL, synchronous=FULL), in process, ms:")
    print("| what | n | p50 | p99 |\n|---|---|---|---|")
    print(row("save (body + 1 input item)", writes))

    proc, root = start_server(directory / "serve.log", "--state", str(directory / "state.sqlite3"))
    try:
        for concurrency in args.concurrency:
            lat = asyncio.run(http_latencies(root, args.requests, concurrency, args.max_output_tokens))
            print(f"\nPOST /v1/responses, {args.max_output_tokens} output tokens, {concurrency} at a time, ms:")
            print("| store | n | p50 | p99 |\n|---|---|---|---|")
            print(row("true", lat["stored"]))
            print(row("false", lat["unstored"]))
            p50 = (percentile(lat["stored"], 50) - percentile(lat["unstored"], 50)) * 1000
            p99 = (percentile(lat["stored"], 99) - percentile(lat["unstored"], 99)) * 1000
            print(f"added by storing: p50 {p50:+.1f} ms, p99 {p99:+.1f} ms")
        cont = asyncio.run(continuation_latencies(root, args.turns, args.max_output_tokens))
        print(f"\nA conversation of {args.turns} turns, each turn's latency, ms (later turns have longer histories):")
        print("| sent as | n | p50 | p99 | last turn |\n|---|---|---|---|---|")
        for name, values in cont.items():
            print(f"{row(name, values)} {values[-1] * 1000:.1f} |")
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"\n{statistics.mean(writes) * 1000:.2f} ms mean store write; server log: {directory / 'serve.log'}")


if __name__ == "__main__":
    main()
