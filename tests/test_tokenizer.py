"""Tokenization of the bundled model: ids equal llama.cpp's on a varied corpus,
special tokens are recognised, and streamed detokenization never splits a
UTF-8 character."""

from __future__ import annotations

import pytest

CORPUS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces and trailing   ",
    "multiple\n\nnewlines\n\n\n\nand\ttabs\t\there",
    "          ten spaces",
    "Unicode: naïve café, Straße, Ελληνικά, русский, 日本語のテキスト, 한국어, العربية, עברית",
    "Emoji: 🙂🚀👩‍👩‍👧‍👦 🇫🇷 ❤️ 🫠",
    "Numbers 1234567890 3.14159 1,000,000 2026-11-22 0x1F 1e-9",
    "def f(x):\n    return {'a': [1, 2, 3], \"b\": x ** 2}  # comment\n",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }\r\n",
    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text<|im_end|>",
    "It's, they're, we've, I'm, you'll, he'd, Don't, CAN'T",
    "a" * 300,
    "https://example.com/path?query=1&x=%20#frag",
    "Mixed\u00a0non-breaking\u2009thin\u200bzero-width spaces",
    "",
]


def test_special_tokens_in_text_are_single_ids(default_model):
    tok = default_model.tokenizer
    ids = tok.encode("<|im_start|>user<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2 and len(ids) == 3


def test_stop_tokens_include_end_of_turn(default_model):
    assert {0, 2} <= default_model.tokenizer.stop_ids


@pytest.mark.parametrize("text", [t for t in CORPUS if t])
def test_decode_inverts_encode(default_model, text):
    tok = default_model.tokenizer
    plain = text.replace("<|im_start|>", "").replace("<|im_end|>", "").replace("<|endoftext|>", "")
    assert tok.decode(tok.encode(plain)) == plain


def test_incremental_decoding_never_splits_a_character(default_model):
    tok = default_model.tokenizer
    text = "Emoji 🙂🚀👩‍👩‍👧‍👦 and 日本語 and naïve café 🇫🇷"
    ids = tok.encode(text)
    decoder = tok.decoder()
    pieces = [decoder.push(i) for i in ids]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    # Some tokens here are partial characters, so some pushes must yield nothing.
    assert "" in pieces


@pytest.mark.peer
def test_token_ids_equal_llama_cpp(default_model, llama_cpp_model):
    tok = default_model.tokenizer
    mismatches = []
    for text in CORPUS:
        ours = tok.encode(text)
        theirs = llama_cpp_model.tokenize(text.encode(), add_bos=False, special=True)
        if ours != theirs:
            mismatches.append((text, ours, theirs))
    agreement = 1 - len(mismatches) / len(CORPUS)
    print(f"tokenizer agreement with llama.cpp: {agreement:.0%} of {len(CORPUS)} strings")
    assert not mismatches, mismatches[:3]
