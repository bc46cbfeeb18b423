"""The access log, and request ids on every log line.

One line per request when it ends (a stream: when its last event is sent or
its client leaves), on the logger ``pycompat.access``: time, client address,
method, path, status, model, prompt / completion / cached tokens, time to first
token, duration, request id. Prompts and completions are private: they are
logged only with ``--log-content``.

``--log-format text`` writes the usual ``time level logger: message`` lines,
the access line's fields as ``key=value`` (strings JSON-quoted when they hold
spaces or quotes); ``--log-format json`` writes every line, access or not, as
one JSON object. Any line logged while a request is being answered (an error
on it) carries that request's id.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone

from pycompat.api.exchange import Exchange, current_request_id

log = logging.getLogger("pycompat.access")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The request fields the access log takes the prompt from, in the order tried (chat, completions, responses and embeddings).
PROMPT_FIELDS = ("messages", "prompt", "input")


class AccessLog:
    """Writes one access-log line per request; ``content``: with its prompt and completion (--log-content)."""

    def __init__(self, content: bool = False):
        self.content = content

    def write(self, ex: Exchange, request_body: bytes = b"") -> None:
        fields = self.fields(ex, request_body)
        log.info(_text(fields), extra={"access": fields})

    def fields(self, ex: Exchange, request_body: bytes = b"") -> dict:
        fields = {
            "time": _iso(time.time()),
            "client": ex.client,
            "method": ex.method,
            "path": ex.path,
            "status": ex.status,
            "model": ex.model or None,
            "prompt_tokens": ex.prompt_tokens,
            "completion_tokens": ex.completion_tokens,
            "cached_tokens": ex.cached_tokens,
            "ttft_ms": None if ex.ttft is None else round(ex.ttft * 1000, 1),
            "duration_ms": round(ex.duration * 1000, 1),
            "request_id": ex.id,
        }
        if ex.cancelled:
            fields["cancelled"] = True
        if self.content:
            fields["prompt"] = _prompt_of(request_body)
            fields["completion"] = ["".join(pieces) for _, pieces in sorted(ex.completion.items())] or None
        return fields


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _prompt_of(body: bytes):
    """What the request asked with (its messages, prompt or input), as it sent it."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    if not isinstance(parsed, dict):
        return None
    return next((parsed[k] for k in PROMPT_FIELDS if k in parsed), None)


def _text(fields: dict) -> str:
    """``client "METHOD path" status key=value ...``, the access line in text."""
    rest = " ".join(f"{k}={_value(v)}" for k, v in fields.items()
                    if k not in ("time", "client", "method", "path", "status"))
    return f"{fields['client']} {json.dumps(fields['method'] + ' ' + fields['path'], ensure_ascii=False)} {fields['status']} {rest}"


def _value(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str) and v and not any(c in v for c in ' "=\\') and v.isprintable():
        return v
    if isinstance(v, (int, float)):
        return str(v)
    return json.dumps(v, ensure_ascii=False)


# --- every log line ---


class RequestIdFilter(logging.Filter):
    """Gives each record the id of the request being answered when it was logged (``request_id``; None outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id()
        return True


class TextFormatter(logging.Formatter):
    """The usual line, with `` request_id=...`` after a message logged while answering a request."""

    def __init__(self):
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        if request_id and not hasattr(record, "access"):  # an access line names its id already
            first, sep, rest = line.partition("\n")  # before a traceback
            line = f"{first} request_id={request_id}{sep}{rest}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: an access line's fields, or time, level, logger, message (and request id, exception)."""

    def format(self, record: logging.LogRecord) -> str:
        access = getattr(record, "access", None)
        if access is not None:
            return json.dumps(access, ensure_ascii=False)
        obj = {"time": _iso(record.created), "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if getattr(record, "request_id", None):
            obj["request_id"] = record.request_id
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False)


def configure(level: str = "info", fmt: str = "text") -> None:
    """Logging for ``pycompat serve``: to stderr, in ``fmt`` (text or json), with request ids."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
