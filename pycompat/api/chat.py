"""The chat service: what every dialect's chat routes share, in no dialect's
words or shapes. Messages (role and text content, calls and call ids as
OpenAI's chat spells them) become a prompt through the model's chat
template, told about the tools offered; the answer is held to the grammar the
tools or the output format ask for; ``Calls`` reads the calls back out of its
text. OpenAI's chat completions and Responses, and Ollama's /api/chat, all
queue their answers here.
"""

from __future__ import annotations

from pycompat.api import generation, structured, tools
from pycompat.api.errors import APIError
from pycompat.api.generation import Choices


async def start(served, messages: list[dict], tool_request: tools.ToolRequest | None,
                output: structured.OutputGrammar | None, opts: generation.SamplingOptions, field: str,
                format_field: str = "response_format", legacy: bool = False, window: int | None = None) -> tuple[Calls, Choices]:
    """Queues a chat: ``messages`` answered under the tools offered and the
    output grammar asked for. Returns how calls are read from the answer, and
    its choices. ``field`` names the request field that holds the messages, and
    ``format_field`` the one that holds the output format, for errors.
    ``legacy``: the tools came as OpenAI's deprecated ``functions``. ``window``:
    a context smaller than the model's that prompt and answer must fit (generation.fit_window)."""
    # Before any work: messages that cannot fit the context whatever their tokens.
    generation.check_prompt_bytes(served, sum(len(m["content"].encode("utf-8")) for m in messages), opts.max_tokens, field)
    calls = Calls.plan(served, tool_request, output, format_field, legacy)
    prompt_text = generation.chat_prompt(served, calls.messages(messages), field, tools=calls.template_tools())
    grammar = calls.grammar() or output
    opts.special_text = calls.needs_special_text
    if grammar is not None:
        opts.grammar = await structured.compile(served, grammar)
    prompt = await generation.tokenize(served, prompt_text)
    generation.fit_window(opts, len(prompt), window, field)
    return calls, generation.start(served, [prompt], opts, field)


def history_prompt(served, messages: list[dict]) -> str:
    """The text every later turn after ``messages`` begins with, when it offers
    no tools: their prompt without the assistant's turn opened. What warming
    the prefix cache computes."""
    calls = Calls.plan(served, None, None)
    return generation.chat_prompt(served, calls.messages(messages), "messages", add_generation_prompt=False)


class Calls:
    """How one request's answer deals with tools: the format the model is told
    about them in, and the parser that reads calls out of its text (None: the
    answer is plain text)."""

    def __init__(self, format: tools.JsonFormat | tools.HermesFormat, request: tools.ToolRequest, legacy: bool):
        self.format, self.request, self.legacy = format, request, legacy

    @classmethod
    def plan(cls, served, tool_request: tools.ToolRequest | None, output: structured.OutputGrammar | None,
             format_field: str = "response_format", legacy: bool = False) -> Calls:
        fmt = served.call_format
        if tool_request is None:
            return cls(fmt, tools.ToolRequest([], tools.ToolChoice(tools.NONE)), legacy=False)
        if output is not None and tool_request.choice.mode == tools.AUTO:
            raise APIError(400, f"Invalid '{format_field}': an output format together with tools the model may choose to call "
                           "is not supported yet: use one of them, or force the call (OpenAI's 'tool_choice').",
                           param=format_field, code="invalid_value")
        return cls(fmt, tool_request, legacy)

    @property
    def parses(self) -> bool:
        return self.request.choice.mode != tools.NONE

    @property
    def forced(self) -> bool:
        """Whether the answer must be calls (tool_choice required, or a named function)."""
        return self.request.choice.mode in (tools.REQUIRED, tools.NAMED)

    @property
    def needs_special_text(self) -> bool:
        """Whether the call markers are special tokens, which the text must then keep."""
        return self.parses and getattr(self.format, "open_is_special", False)

    def messages(self, messages: list[dict]) -> list[dict]:
        return self.format.prompt_messages(messages, self.request)

    def template_tools(self) -> list[dict] | None:
        return self.format.template_tools(self.request)

    def grammar(self) -> structured.OutputGrammar | None:
        field = "functions" if self.legacy else "tools"
        return self.format.grammar(self.request, field)

    def parser(self) -> tools.CallParser | None:
        return self.format.parser(self.forced) if self.parses else None
