"""The dialect-neutral generation service on a stub engine: where sampling
options come from, and a request for no tokens, which never reaches the engine."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pycompat.api import generation
from pycompat.api.errors import ContextExceeded
from pycompat.api.registry import ServedModel
from pycompat.engine.engine import ContextOverflow

FALLBACK = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "seed": None, "stop": None, "logit_bias": None,
            "presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0, "ignore_eos": False}


class StubEngine:
    def __init__(self, recommended: dict, context_length: int = 8):
        self.model = SimpleNamespace(sampling_defaults=recommended)
        self.context_length = context_length

    def check_fits(self, prompt_tokens: int, max_tokens: int | None) -> None:
        if prompt_tokens + (max_tokens or 0) >= self.context_length:
            raise ContextOverflow(prompt_tokens, max_tokens, self.context_length)


def served(recommended: dict | None = None) -> ServedModel:
    return ServedModel(["m"], created=0, engine=StubEngine(recommended or {}))


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
