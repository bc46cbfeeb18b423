"""The dialect-neutral generation service on a stub engine: where sampling
options come from, and a request for no tokens, which never reaches the engine."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pycompat.api import generation
from pycompat.api.errors import ContextExceeded, MaxTokensOverLimit
from pycompat.api.registry import ServedModel
from pycompat.engine.config import EngineConfig
from pycompat.engine.engine import ContextOverflow

FALLBACK = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "seed": None, "stop": None, "logit_bias": None,
            "presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0, "ignore_eos": False}


class StubEngine:
    def __init__(self, recommended: dict, context_length: int = 8, max_tokens_limit: int | None = None):
        self.model = SimpleNamespace(sampling_defaults=recommended)
        self.config = EngineConfig(max_tokens_limit=max_tokens_limit)
        self.context_length = context_length

    def check_fits(self, prompt_tokens: int, max_tokens: int | None) -> None:
        if prompt_tokens + (max_tokens or 0) >= self.context_length:
            raise ContextOverflow(prompt_tokens, max_tokens, self.context_length)


def served(recommended: dict | None = None, max_tokens_limit: int | None = None) -> ServedModel:
    return ServedModel(["m"], created=0, engine=StubEngine(recommended or {}, max_tokens_limit=max_tokens_limit))


@pytest.mark.parametrize("requested, recommended, expected", [
    ({}, {}, {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "seed": None, "stop": [], "logit_bias": {},
              "presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0, "ignore_eos": False}),
    # Penalties are the request's or the dialect's: a model's recommendation (generation_config.json
    # often has repetition_penalty) does not apply, so requests without them sample as before.
    ({}, {"repetition_penalty": 1.05}, {"repetition_penalty": 1.0}),
    ({"presence_penalty": -1.5, "frequency_penalty": 2.0, "repetition_penalty": 1.3, "ignore_eos": True}, {},
     {"presence_penalty": -1.5, "frequency_penalty": 2.0, "repetition_penalty": 1.3, "ignore_eos": True}),
    ({}, {"temperature": 0.2, "top_k": 40.0, "min_p": 0.05}, {"temperature": 0.2, "top_k": 40, "min_p": 0.05, "top_p": 1.0}),
    ({"temperature": 0.0, "top_k": 0}, {"temperature": 0.2, "top_k": 40}, {"temperature": 0.0, "top_k": 0}),  # zero is a value
    ({"seed": 7, "stop": ["x"], "logit_bias": {3: -100.0}}, {}, {"seed": 7, "stop": ["x"], "logit_bias": {3: -100.0}}),
    ({"stop": []}, {}, {"stop": []}),
])
def test_a_request_then_the_model_then_the_dialect_choose_sampling(requested, recommended, expected):
    opts = generation.sampling_options(served(recommended), 5, {**dict.fromkeys(FALLBACK), **requested}, FALLBACK)
    assert opts.max_tokens == 5
    for name, value in expected.items():
        assert getattr(opts, name) == value and type(getattr(opts, name)) is type(value), name


@pytest.mark.parametrize("asked, default, limit, expected", [
    (None, None, None, None),  # no bound anywhere: the context is the bound
    (None, None, 100, None),  # none asked: still None here (the engine bounds every sequence by the limit)
    (None, 16, 100, 16),  # the dialect's default, within the limit
    (None, 16, 10, 10),  # a default above the limit is lowered, not refused: the client asked for nothing
    (100, 16, 100, 100),  # exactly the limit
    (0, None, 100, 0),
])
def test_max_tokens_within_the_servers_limit(asked, default, limit, expected):
    opts = generation.sampling_options(served(max_tokens_limit=limit), asked, dict.fromkeys(FALLBACK), FALLBACK,
                                       max_tokens_default=default)
    assert opts.max_tokens == expected


def test_max_tokens_above_the_servers_limit_is_refused_naming_the_field():
    with pytest.raises(MaxTokensOverLimit) as refused:
        generation.sampling_options(served(max_tokens_limit=100), 101, dict.fromkeys(FALLBACK), FALLBACK,
                                    max_tokens_field="max_output_tokens")
    assert (refused.value.field, refused.value.asked, refused.value.limit) == ("max_output_tokens", 101, 100)


async def test_no_tokens_asked_finishes_at_once_if_each_prompt_fits():
    opts = generation.SamplingOptions(max_tokens=0)
    choices = generation.start(served(), [[1, 2], [3]], opts, "prompt")
    results = await choices.run_to_end()
    assert [(r.text, r.finished.reason, r.finished.prompt_tokens, r.finished.completion_tokens) for r in results] == [
        ("", "length", 2, 0), ("", "length", 1, 0)]
    with pytest.raises(ContextExceeded) as refused:
        generation.start(served(), [[1], list(range(8))], opts, "prompt")
    e = refused.value
    assert (e.context_length, e.prompt_tokens, e.max_tokens, e.field, e.prompt_bytes) == (8, 8, 0, "prompt", None)
