"""Ollama's prompt templates, as far as /api/generate needs them.

Ollama's templates are Go templates. A ``template`` sent with a generate
request is rendered here when it uses only what a single-turn prompt needs:
``{{ .System }}``, ``{{ .Prompt }}``, ``{{ .Response }}`` (the prompt ends
where the answer would begin), ``{{ if .X }}`` / ``{{ else }}`` / ``{{ end }}``
on those, and the ``{{-``/``-}}`` trim markers. Anything else (``range
.Messages``, functions, pipelines) is refused by name, never rendered wrong.

``from_chat_template`` goes the other way, for /api/show: the model's Jinja
chat template rendered around stand-ins, written back as such a Go template.
"""

from __future__ import annotations

import re
from collections import deque

from pycompat.api.errors import APIError

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
_FIELDS = {".System", ".Prompt", ".Response"}


class TemplateUnsupported(APIError):
    def __init__(self, what: str):
        super().__init__(400, f"template: {what[:80]!r} is not supported here; a template may use {{{{ .System }}}}, "
                         "{{ .Prompt }}, {{ .Response }} and {{ if }}/{{ else }}/{{ end }} on them")


def render(template: str, system: str, prompt: str) -> str:
    """The prompt ``template`` makes of ``system`` and ``prompt``, up to where the response begins."""
    nodes, end = _parse(deque(_tokens(template)), 0)
    if end is not None:
        raise TemplateUnsupported("{{ " + end + " }} without {{ if }}")
    out: list[str] = []
    _emit(nodes, {".System": system, ".Prompt": prompt}, out)
    return "".join(out)


def _tokens(template: str) -> list[tuple[str, str]]:
    """Text and actions, with the trim markers applied to the text beside them."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        if trim_next:
            text = text.lstrip()
        if m[1]:
            text = text.rstrip()
        tokens.append(("text", text))
        tokens.append(("action", m[2]))
        trim_next = bool(m[3])
        pos = m.end()
    tail = template[pos:]
    tokens.append(("text", tail.lstrip() if trim_next else tail))
    return tokens


MAX_NESTING = 32  # ifs within ifs: a prompt template needs two or three


def _parse(tokens: deque[tuple[str, str]], depth: int) -> tuple[list, str | None]:
    """Nodes up to an ``else`` or ``end`` (consumed, and named in the result) or
    the end of the template (None). Consumes ``tokens`` from the front."""
    if depth > MAX_NESTING:
        raise TemplateUnsupported(f"more than {MAX_NESTING} nested {{{{ if }}}}s")
    nodes: list = []
    while tokens:
        kind, value = tokens.popleft()
        if kind == "text":
            nodes.append(("text", value))
        elif value in _FIELDS:
            nodes.append(("field", value))
        elif value.startswith("if "):
            condition = value[3:].strip()
            if condition not in _FIELDS:
                raise TemplateUnsupported("{{ " + value + " }}")
            then, closed = _parse(tokens, depth + 1)
            otherwise: list = []
            if closed == "else":
                otherwise, closed = _parse(tokens, depth + 1)
            if closed != "end":
                raise TemplateUnsupported("{{ if }} without {{ end }}")
            nodes.append(("if", condition, then, otherwise))
        elif value in ("else", "end"):
            return nodes, value
        elif not value.startswith("/*"):  # a comment is dropped; anything else is refused
            raise TemplateUnsupported("{{ " + value + " }}")
    return nodes, None


def _emit(nodes: list, values: dict, out: list[str]) -> bool:
    """Appends the nodes' text to ``out``; returns True at {{ .Response }}, where the prompt ends."""
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "field":
            if node[1] == ".Response":
                return True
            out.append(values[node[1]])
        elif _emit(node[2] if values.get(node[1]) else node[3], values, out):
            return True
    return False


# Stand-ins no real text contains, for turning a rendered chat template back into a Go template.
_SYSTEM, _PROMPT = "\x00SYSTEM\x00", "\x00PROMPT\x00"


def from_chat_template(chat_template, bos_text: str | None = None) -> str:
    """The model's chat template as a Go template for one system message and one prompt."""
    def go(text: str) -> str:
        return text.replace(_SYSTEM, "{{ .System }}").replace(_PROMPT, "{{ .Prompt }}")

    with_system = chat_template.render([{"role": "system", "content": _SYSTEM}, {"role": "user", "content": _PROMPT}],
                                       add_generation_prompt=True)
    without = chat_template.render([{"role": "user", "content": _PROMPT}], add_generation_prompt=True)
    if bos_text and with_system.startswith(bos_text) and without.startswith(bos_text):
        with_system, without = with_system[len(bos_text):], without[len(bos_text):]  # the tokenizer adds it
    body = go(with_system) if with_system == without else f"{{{{ if .System }}}}{go(with_system)}{{{{ else }}}}{go(without)}{{{{ end }}}}"
    return body + "{{ .Response }}"
