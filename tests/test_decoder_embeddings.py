"""Sentence embeddings from a text model (KernelModel.embed), as llama.cpp's
server makes them: output-normed final hidden states averaged over the tokens,
at unit length. Checked against the numpy reference on a small random model."""

from __future__ import annotations

import numpy as np
import pytest

import reference
from pycompat import _kernel
from pycompat.engine.runner import SoloSequence
from pycompat.loading.load import load_model
from tiny_models import TinyConfig, byte_vocab, random_weights, reference_config, reference_weights, write_hf_model

VOCAB = len(byte_vocab()[0])
ODD = TinyConfig(dim=60, n_layers=3, n_heads=6, n_kv_heads=2, ffn_dim=100)
# Lengths on both attention paths (a prompt chunk from 16 tokens on) and over a cache block.
INPUTS = [[5], [77, 201, 13], list(range(3, 40)), [250, 9, 140, 33, 61, 7, 7, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "m"
    stored = write_hf_model(path, ODD, random_weights(ODD, VOCAB, seed=5), "F32")
    return load_model(path), reference_config(ODD, VOCAB), reference_weights(stored)


def embed(kernel, batch: list[list[int]]) -> np.ndarray:
    return np.frombuffer(kernel.embed(batch), dtype="<f4").reshape(len(batch), kernel.dim)


def test_embeddings_match_the_reference(tiny):
    model, cfg, w = tiny
    ours = embed(model.kernel, INPUTS)
    ref = np.array([reference.decoder_embedding(cfg, w, ids) for ids in INPUTS])
    assert np.abs(ours - ref).max() < 1e-4
    # Not a constant vector: inputs differ from one another far beyond the margin.
    assert min(np.abs(ref[i] - ref[j]).max() for i in range(4) for j in range(i)) > 1e-2


def test_a_batch_equals_each_input_alone_and_leaves_sequences_alone(tiny):
    model, _, _ = tiny
    seq = SoloSequence(model.kernel)
    before = np.frombuffer(seq.forward([1, 2, 3]), np.float32)
    together = embed(model.kernel, INPUTS)
    for i, ids in enumerate(INPUTS):
        np.testing.assert_allclose(embed(model.kernel, [ids])[0], together[i], atol=1e-6)
    # A sequence's cache is untouched by embedding calls in between (they have a cache of their own).
    after = np.frombuffer(seq.forward([4]), np.float32)
    fresh = SoloSequence(model.kernel)
    fresh.forward([1, 2, 3])
    np.testing.assert_array_equal(after, np.frombuffer(fresh.forward([4]), np.float32))
    assert before.shape == after.shape


@pytest.mark.parametrize("batch", [[[]], [[VOCAB + 5]], [[1] * 5000]])
def test_bad_inputs_are_kernel_errors(tiny, batch):
    model, _, _ = tiny
    with pytest.raises(_kernel.KernelError):
        model.kernel.embed(batch)
