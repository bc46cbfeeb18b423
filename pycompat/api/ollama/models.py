"""Ollama's model management routes: list (/api/tags), describe (/api/show),
running (/api/ps), the version, and copy (an alias, as ``ollama cp`` makes
one). Models come from the command line here, so ``pull`` succeeds only for
a model already served, ``delete`` removes only an alias made by ``copy``, and
``push`` and ``create`` are refused."""

from __future__ import annotations

from pycompat.api import json_body
from pycompat.api.errors import APIError, UnknownModel
from pycompat.api.ollama import names
from pycompat.api.ollama.fields import Body, bad
from pycompat.api.ollama.replies import json_reply, line, local_timestamp, ndjson_reply, timestamp
from pycompat.api.ollama.template import from_chat_template
from pycompat.api.registry import EMBED, GENERATE, Registry, ServedModel
from pycompat.http.messages import Request, Response

# The Ollama API version this dialect follows (the clients that read it gate features on it).
OLLAMA_VERSION = "0.12.0"
LOADED_WITH = "models are loaded with `pycompat serve --model`"


async def version(request: Request) -> Response:
    return json_reply({"version": OLLAMA_VERSION})


def details(served: ServedModel) -> dict:
    card = served.card
    family = card.family if card is not None else (served.engine.model.kernel.config.arch if served.engine is not None else "")
    return {
        "parent_model": "",
        "format": card.format if card is not None else "",
        "family": family,
        "families": [family] if family else None,
        "parameter_size": card.parameter_size if card is not None else "",
        "quantization_level": card.quantization if card is not None else "",
    }


def _listing(served: ServedModel, model_id: str) -> dict:
    card = served.card
    name = names.listed(model_id)
    return {
        "name": name,
        "model": name,
        "modified_at": local_timestamp(card.modified if card is not None else served.created),
        "size": card.size if card is not None else 0,
        "digest": card.digest if card is not None else "",
        "details": details(served),
    }


async def tags(registry: Registry, request: Request) -> Response:
    return json_reply({"models": [_listing(m, i) for m in registry.models for i in m.ids]})


async def ps(registry: Registry, request: Request) -> Response:
    forever = _forever()
    running = []
    for m in registry.models:
        for i in m.ids:
            entry = _listing(m, i)
            del entry["modified_at"]
            context = m.engine.model.context_length if m.engine is not None else m.embedding.context_length
            running.append({**entry, "expires_at": forever, "size_vram": 0, "context_length": context})
    return json_reply({"models": running})


def _forever() -> str:
    """Ollama's expires_at for a model that never unloads: now plus the longest Go
    duration, about 292 years (past what Python's datetime adds, so the year is added by hand)."""
    now = timestamp()
    return f"{int(now[:4]) + 292}{now[4:]}"


async def show(registry: Registry, request: Request) -> Response:
    body = Body(await json_body.parse_object(request.body), {"model", "name", "verbose", "system", "template", "options"})
    name = body.get("model", str) or body.required("name", str)
    body.get("verbose", bool)
    served = names.find(registry, name)
    card = served.card
    capabilities = []
    if GENERATE in served.kinds:
        capabilities += ["completion", "tools"]
        if served.engine.model.tokenizer.fim_ids is not None:
            capabilities.append("insert")
    if EMBED in served.kinds:
        capabilities.append("embedding")
    go_template = _template(served)
    parameters = _parameters(served)
    where = card.path if card is not None else served.ids[0]
    modelfile = [f"# Modelfile of {names.listed(names.served_id(registry, name))}, as pycompat serves it", f"FROM {where}"]
    if go_template:
        modelfile.append(f'TEMPLATE """{go_template}"""')
    modelfile += [f"PARAMETER {p}" for p in parameters]
    out = {
        "modelfile": "\n".join(modelfile) + "\n",
        "parameters": "\n".join(f"{p.split(' ', 1)[0]:<30} {p.split(' ', 1)[1]}" for p in parameters),
        "template": go_template,
        "details": details(served),
        "model_info": dict(card.info) if card is not None else {},
        "capabilities": capabilities,
        "modified_at": local_timestamp(card.modified if card is not None else served.created),
    }
    license_ = card.info.get("general.license") if card is not None else None
    if isinstance(license_, str):
        out["license"] = license_
    return json_reply(out)


def _template(served: ServedModel) -> str:
    if served.engine is None:
        return ""
    model = served.engine.model
    try:
        return from_chat_template(model.chat_template, model.tokenizer.bos_text if model.tokenizer.add_bos else None)
    except Exception:  # a template that insists on other messages: shown as empty rather than failing the route
        return ""


def _parameters(served: ServedModel) -> list[str]:
    """The model's sampling defaults and stop tokens, as Modelfile PARAMETER lines."""
    if served.engine is None:
        return []
    model = served.engine.model
    lines = [f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(model.sampling_defaults.items())]
    lines += [f'stop "{model.tokenizer.token_text(t)}"' for t in sorted(getattr(model.tokenizer, "stop_ids", ()) or ())]
    lines.append(f"num_ctx {model.context_length}")
    return lines


async def copy(registry: Registry, request: Request) -> Response:
    body = Body(await json_body.parse_object(request.body), {"source", "destination"})
    source = body.required("source", str)
    destination = body.required("destination", str)
    target = destination.removesuffix(names.LATEST)
    try:
        registry.add_alias(names.served_id(registry, source), target)
    except ValueError as e:
        raise bad(f'cannot copy to "{destination[:200]}": {e}') from None
    return Response(200, b"", content_type="text/plain; charset=utf-8")


async def delete(registry: Registry, request: Request) -> Response:
    body = Body(await json_body.parse_object(request.body), {"model", "name"})
    name = body.get("model", str) or body.required("name", str)
    model_id = names.served_id(registry, name)
    try:
        registry.remove_alias(model_id)
    except ValueError:
        raise bad(f'"{name[:200]}" cannot be deleted: only a copy made with /api/copy can; {LOADED_WITH}') from None
    return Response(200, b"", content_type="text/plain; charset=utf-8")


async def pull(registry: Registry, request: Request) -> Response:
    body = Body(await json_body.parse_object(request.body), {"model", "name", "insecure", "stream", "username", "password"})
    name = body.get("model", str) or body.required("name", str)
    stream = body.get("stream", bool, True)
    try:
        names.served_id(registry, name)
    except UnknownModel:
        raise bad(f'cannot pull "{name[:200]}": this server downloads nothing; {LOADED_WITH}') from None
    if not stream:
        return json_reply({"status": "success"})

    async def lines():
        yield line({"status": "success"})

    return ndjson_reply(lines())


async def push(request: Request) -> Response:
    raise APIError(400, f"push is not supported: this server serves local files only; {LOADED_WITH}")


async def create(request: Request) -> Response:
    raise APIError(400, f"create is not supported: this server builds no models; {LOADED_WITH}")
