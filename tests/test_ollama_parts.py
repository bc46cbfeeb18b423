"""The Ollama dialect's parts that need no server: its Go-template subset,
``options`` read into sampling, model names, and model cards."""

from __future__ import annotations

import pytest

from pycompat.api.errors import APIError
from pycompat.api.ollama import names, template
from pycompat.api.ollama.fields import read_options

LLAMA3 = ("{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
          "<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>"
          "<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>")


def test_template_renders_system_and_prompt_up_to_the_response():
    assert template.render(LLAMA3, "Be brief.", "Hi") == (
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert template.render(LLAMA3, "", "Hi").startswith("<|start_header_id|>user")


def test_template_else_trim_markers_and_comments():
    t = "{{- if .System }}\n  S={{ .System }}\n{{- else }}\n  none\n{{- end }}\n{{/* a comment */}}P={{ .Prompt -}}  \n!"
    assert template.render(t, "x", "y") == "\n  S=x\nP=y!"
    assert template.render(t, "", "y") == "\n  none\nP=y!"
    # The prompt ends at .Response, even inside a branch.
    assert template.render("A{{ if .Prompt }}B{{ .Response }}C{{ end }}D", "", "p") == "AB"


@pytest.mark.parametrize("bad", ["{{ range .Messages }}{{ .Content }}{{ end }}", "{{ .Tools }}", "{{ if .System }}x",
                                 "x{{ end }}", "{{ if and .System .Prompt }}x{{ end }}", "{{ .System | upper }}"])
def test_template_refuses_what_it_does_not_render(bad):
    with pytest.raises(APIError) as e:
        template.render(bad, "s", "p")
    assert e.value.status == 400 and "template" in e.value.message


class _Jinja:
    """A chat template that puts a default system message in when none is given."""

    def render(self, messages, add_generation_prompt=True):
        system = messages[0]["content"] if messages[0]["role"] == "system" else "Default."
        return f"<s>[SYS]{system}[USER]{messages[-1]['content']}[BOT]"


def test_a_chat_template_as_a_go_template_round_trips():
    go = template.from_chat_template(_Jinja(), bos_text="<s>")
    assert go.endswith("{{ .Response }}") and "<s>" not in go
    assert template.render(go, "Be kind.", "Hello") == "[SYS]Be kind.[USER]Hello[BOT]"
    assert template.render(go, "", "Hello") == "[SYS]Default.[USER]Hello[BOT]"


def test_options_map_to_sampling():
    o = read_options({"temperature": 0.5, "top_p": 0.8, "top_k": 20, "min_p": 0.05, "seed": 42, "stop": ["\n", "user:"],
                      "repeat_penalty": 1.2, "presence_penalty": 0.5, "frequency_penalty": -0.5, "num_predict": 100,
                      "num_ctx": 1024, "repeat_last_n": -1, "num_thread": 8, "num_gpu": 99, "mirostat": 0, "typical_p": 1.0,
                      "mirostat_tau": 5.0}, context_length=2048)
    assert o.sampling == {"temperature": 0.5, "top_p": 0.8, "top_k": 20, "min_p": 0.05, "seed": 42, "stop": ["\n", "user:"],
                          "repetition_penalty": 1.2, "presence_penalty": 0.5, "frequency_penalty": -0.5}
    assert o.num_predict == 100 and o.num_ctx == 1024
    assert read_options({"num_predict": -1}, 2048).num_predict is None
    assert read_options({"num_predict": -2}, 2048).num_predict is None
    assert read_options(None, 2048).sampling == {}
    assert read_options({"num_ctx": 4096}, 2048).num_ctx == 2048  # Open WebUI's users set 4096 and more


@pytest.mark.parametrize("options, words", [
    ({"mirostat": 1}, "mirostat"), ({"typical_p": 0.7}, "typical_p"), ({"tfs_z": 0.5}, "tfs_z"),
    ({"num_ctx": 0}, "num_ctx"), ({"temperature": "hot"}, "temperature"), ({"top_p": 1.5}, "top_p"),
    ({"stop": "x" * 2000}, "stop"), ({"made_up": 1}, "unknown option"),
    ({"repeat_last_n": 64, "repeat_penalty": 1.1}, "repeat_last_n"),
])
def test_options_refused_by_name(options, words):
    with pytest.raises(APIError) as e:
        read_options(options, context_length=2048)
    assert e.value.status == 400 and words in e.value.message


def test_repeat_last_n_is_harmless_without_a_penalty():
    assert read_options({"repeat_last_n": 64}, 2048).sampling == {}


def test_names_with_and_without_tags():
    assert names.listed("smollm2") == "smollm2:latest"
    assert names.listed("qwen2.5:0.5b") == "qwen2.5:0.5b"
    assert names.listed("org/model") == "org/model:latest"


def test_model_card_of_the_bundled_model():
    from pycompat.loading.card import describe
    from pycompat.loading.load import default_model_path

    card = describe(default_model_path())
    assert (card.format, card.family, card.quantization) == ("gguf", "llama", "Q4_1")
    assert card.parameter_count == 134515008 and card.parameter_size == "134.5M"
    assert card.info["llama.block_count"] == 30 and "tokenizer.ggml.tokens" not in card.info
    assert card.digest == describe(default_model_path()).digest and len(card.digest) == 64


def test_model_card_of_a_safetensors_directory(tmp_path):
    import json

    import numpy as np

    from pycompat.loading.card import describe
    from pycompat.loading.safetensors import write_safetensors

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 2,
                                                      "max_position_embeddings": 64}))
    write_safetensors(tmp_path / "model.safetensors", {"a": np.zeros((4, 8), np.float32), "b": np.zeros(3, np.float32)})
    card = describe(tmp_path)
    assert (card.format, card.family, card.parameter_count, card.quantization) == ("safetensors", "bert", 35, "F32")
    assert card.info == {"general.architecture": "bert", "general.parameter_count": 35, "bert.embedding_length": 8,
                         "bert.block_count": 2, "bert.context_length": 64}


def test_messages_in_open_webuis_spelling_keep_their_call_ids():
    """Open WebUI sends assistant calls with ids and tool results with ``tool_call_id`` (OpenAI's habit) to /api/chat."""
    from pycompat.api.ollama.chat import parse_messages

    messages = parse_messages([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"index": 0, "id": "call_abc",
                                                             "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_abc"},
        {"role": "tool", "content": "rainy", "tool_name": "get_weather"},
    ])
    assert messages[1]["tool_calls"] == [{"id": "call_abc", "type": "function",
                                          "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    assert messages[2] == {"role": "tool", "content": "sunny", "tool_call_id": "call_abc"}
    assert messages[3] == {"role": "tool", "content": "rainy", "name": "get_weather"}


def test_template_nesting_is_bounded():
    deep = "{{ if .System }}" * 2000 + "x" + "{{ end }}" * 2000
    with pytest.raises(APIError) as e:
        template.render(deep, "s", "p")
    assert e.value.status == 400 and "nested" in e.value.message
    assert template.render("{{ if .System }}" * 30 + "x" + "{{ end }}" * 30, "s", "p") == "x"


def test_a_malformed_past_call_is_a_400():
    from pycompat.api.ollama.chat import parse_messages

    for calls in (5, True, "call", [5], [{"function": "f"}]):
        with pytest.raises(APIError) as e:
            parse_messages([{"role": "assistant", "content": "", "tool_calls": calls}])
        assert e.value.status == 400
    assert parse_messages([{"role": "USER", "content": "hi"}]) == [{"role": "user", "content": "hi"}]  # Ollama lowercases roles


def test_aliases_added_while_serving_are_bounded(monkeypatch):
    """Ollama's copy keeps each alias in memory: a client may not add long ones, or without end."""
    from pycompat.api import registry as registry_module
    from pycompat.api.registry import Registry, ServedModel

    registry = Registry([ServedModel(["m"], 0)])
    for bad in ("", "x" * 257):
        with pytest.raises(ValueError):
            registry.add_alias("m", bad)
    monkeypatch.setattr(registry_module, "MAX_ADDED_ALIASES", 3)
    for i in range(3):
        registry.add_alias("m", f"copy-{i}")
    with pytest.raises(ValueError, match="at most 3"):
        registry.add_alias("m", "one-more")
    registry.add_alias("m", "copy-0")  # again: nothing new
    registry.remove_alias("copy-0")
    registry.add_alias("m", "one-more")
    assert "one-more" in registry and "copy-0" not in registry
