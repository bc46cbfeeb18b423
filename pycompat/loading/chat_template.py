"""Chat templates: the Jinja2 programs shipped with a model that turn a list
of messages into its prompt text. Rendered in Jinja2's immutable sandbox, with
the globals and filters Hugging Face's `apply_chat_template` provides, since
templates are written against that environment."""

from __future__ import annotations

import json
from datetime import datetime

import jinja2
import jinja2.meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Used when a model ships no template: ChatML, which llama.cpp also falls back to.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class TemplateError(Exception):
    """The template failed on these messages (it may raise on purpose, e.g. on role order)."""


def _raise_exception(message: str):
    raise TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class ChatTemplate:
    def __init__(self, source: str | None, bos_token: str, eos_token: str):
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.source = source or CHATML
        try:
            self._template = env.from_string(self.source)
        except jinja2.TemplateError as e:
            raise ValueError(f"the model's chat template does not compile: {e}") from None
        self._bos, self._eos = bos_token, eos_token
        # Whether the template reads `tools` (then it describes them to the model itself).
        self.renders_tools = "tools" in jinja2.meta.find_undeclared_variables(env.parse(self.source))

    def render(self, messages: list[dict], add_generation_prompt: bool = True, tools: list[dict] | None = None) -> str:
        """The prompt text for ``messages`` (and ``tools``, in Hugging Face's
        shape, for a template that ``renders_tools``). Raises TemplateError if the
        template refuses them."""
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self._bos,
                eos_token=self._eos,
                tools=tools,
            )
        except TemplateError:
            raise
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError) as e:
            raise TemplateError(f"the chat template failed on these messages: {e}") from None
