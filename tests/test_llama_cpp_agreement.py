"""Our kernel against llama.cpp (llama-cpp-python) on the same GGUF: greedy
tokens and teacher-forced next-token predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pycompat import _kernel

pytestmark = pytest.mark.peer

PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about autumn.",
    "Explain what a CPU does in one sentence.",
    "List three fruits.",
    "How do I boil an egg?",
]
TEXT = (Path(__file__).parent / "data" / "english.txt").read_text()


def our_greedy(model, prompt_ids: list[int], n: int) -> list[int]:
    seq, sampler, out, new = model.kernel.new_sequence(), _kernel.Sampler(temperature=0.0), [], prompt_ids
    for _ in range(n):
        (token,) = model.kernel.step([(seq, new, sampler)])
        out.append(token)
        new = [token]
    return out


def test_greedy_first_8_tokens_match_on_at_least_4_of_5_prompts(default_model, llama_cpp_model):
    same = 0
    for prompt in PROMPTS:
        ids = default_model.tokenizer.encode(default_model.chat_template.render([{"role": "user", "content": prompt}]))
        theirs = []
        for token in llama_cpp_model.generate(ids, temp=0.0, top_k=1, reset=True):
            theirs.append(token)
            if len(theirs) == 8:
                break
        same += our_greedy(default_model, ids, 8) == theirs
    print(f"greedy agreement with llama.cpp: {same} of {len(PROMPTS)} prompts (first 8 tokens identical)")
    assert same >= 4


def logits_of_llama_cpp(llama, ids: list[int]) -> np.ndarray:
    llama.reset()
    llama.eval(ids)
    return np.array(llama.scores[: len(ids)])


def test_teacher_forced_argmax_agrees_with_llama_cpp(default_model, llama_cpp_model):
    ids = default_model.tokenizer.encode(TEXT)
    assert len(ids) >= 1000  # the speed issue: logprob within 1% of llama.cpp on at least 1,000 tokens
    (raw,) = default_model.kernel.forward([(default_model.kernel.new_sequence(), ids)], all_logits=True)
    ours = np.frombuffer(raw, np.float32).reshape(len(ids), -1)
    batch = logits_of_llama_cpp(llama_cpp_model, ids)
    agree = float((ours.argmax(1) == batch.argmax(1)).mean())
    # Many next-token choices of this Q4_1 model are near-ties that rounding decides:
    # llama.cpp disagrees with itself (one batch vs token by token) at about 3% of
    # positions, and we differ from it at about 4%. Where its choice is clear (its
    # top two logits more than 0.2 apart: ~85% of positions) we must agree almost
    # always; a real error (a wrong rotation, a misread block) breaks that at once.
    top2 = np.sort(batch, 1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.2
    agree_clear = float((ours.argmax(1)[clear] == batch.argmax(1)[clear]).mean())
    print(f"teacher-forced argmax agreement over {len(ids)} tokens: {agree:.2%} of all; "
          f"{agree_clear:.2%} of the {clear.sum()} where llama.cpp's choice is clear")
    assert clear.mean() > 0.7 and agree_clear >= 0.99

    def mean_logprob(logits: np.ndarray) -> float:
        x = logits[:-1].astype(np.float64)
        x = x - x.max(1, keepdims=True)
        x = x - np.log(np.exp(x).sum(1, keepdims=True))
        return float(x[np.arange(len(ids) - 1), ids[1:]].mean())

    ours_lp, theirs_lp = mean_logprob(ours), mean_logprob(batch)
    print(f"mean log-probability per token: ours {ours_lp:.4f}, llama.cpp {theirs_lp:.4f}")
    assert abs(ours_lp - theirs_lp) < 0.01 * abs(theirs_lp)
