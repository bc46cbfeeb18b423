"""The kernel's environment variables. PYCOMPAT_KERNEL=portable forces the
portable (non-SIMD) kernels everywhere, which is how a user rules out a SIMD
bug; PYCOMPAT_THREADS sets the default number of compute threads. The kernel
reads each once per process, so every case runs in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tiny_models import TinyConfig, byte_vocab, random_weights, write_gguf_model

VOCAB = len(byte_vocab()[0])
# Heads of 16, so a prompt takes the SIMD path's shared-key attention too.
CFG = TinyConfig(dim=96, n_layers=2, n_heads=6, n_kv_heads=3, ffn_dim=160, tied=True)
PROMPT = [(i * 7919 + 3) % VOCAB for i in range(40)]

REPORT = "from pycompat import _kernel; print(_kernel.simd_path(), _kernel.threads())"
# Logits of every position of a prompt, then of four decoded tokens.
LOGITS = """
import sys
import numpy as np
from pycompat import _kernel
from pycompat.engine.runner import SoloSequence
from pycompat.loading.load import load_model
model, prompt = load_model(sys.argv[1]), [int(t) for t in sys.argv[3].split(",")]
seq = SoloSequence(model.kernel)
rows = [seq.forward(prompt, all_logits=True)]
for token in prompt[:4]:
    rows.append(seq.forward([token]))
np.save(sys.argv[2], np.concatenate([np.frombuffer(r, np.float32) for r in rows]))
print(_kernel.simd_path())
"""


def run_python(code: str, *args: str, **env: str) -> str:
    """Runs `code` in a fresh interpreter with the kernel's variables set to `env`
    only (none inherited from this process); returns its output."""
    clean = {k: v for k, v in os.environ.items() if k not in ("PYCOMPAT_KERNEL", "PYCOMPAT_THREADS")}
    done = subprocess.run([sys.executable, "-c", code, *args], env={**clean, **env}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def cpu_runs_avx2() -> bool:
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    return {"avx2", "fma", "f16c"} <= set(flags.split())


def test_portable_is_forced_and_anything_else_picks_the_best():
    assert run_python(REPORT, PYCOMPAT_KERNEL="portable").split()[0] == "portable"
    best = run_python(REPORT).split()[0]
    if sys.platform.startswith("linux"):
        assert best == ("avx2" if cpu_runs_avx2() else "portable")
    for other in ("avx2", "", "Portable", "scalar"):
        assert run_python(REPORT, PYCOMPAT_KERNEL=other).split()[0] == best, other


def test_threads_default_to_the_variable():
    assert run_python(REPORT, PYCOMPAT_THREADS="3").split()[1] == "3"
    assert run_python(REPORT, PYCOMPAT_THREADS="1").split()[1] == "1"
    cores = run_python(REPORT).split()[1]
    for ignored in ("0", "many"):
        assert run_python(REPORT, PYCOMPAT_THREADS=ignored).split()[1] == cores, ignored
    # An explicit count (serve --threads) wins over the variable.
    explicit = "from pycompat import _kernel; assert _kernel.set_threads(2); print(_kernel.threads())"
    assert run_python(explicit, PYCOMPAT_THREADS="3") == "2"


# Float formats differ by summation order only. Block formats meet activations
# rounded to 8 bits: where the paths' last-bit differences put an activation on
# either side of a rounding step, that position's logits, and all later ones
# through the cache, move by about 1% (measured: up to 1.6e-2 for Q4_1, 1e-2
# for Q8_0; before the first such step, 3e-7).
TOLERANCE = {"F32": 1e-5, "F16": 1e-4, "Q8_0": 5e-2, "Q4_0": 5e-2, "Q4_1": 5e-2}


@pytest.mark.parametrize("kind", list(TOLERANCE))
def test_portable_and_simd_kernels_give_the_same_logits(tmp_path, kind):
    write_gguf_model(tmp_path / "m.gguf", CFG, random_weights(CFG, VOCAB, seed=14), kind)
    logits = {}
    for kernel in ("portable", "best"):
        out = tmp_path / f"{kernel}.npy"
        path = run_python(LOGITS, str(tmp_path / "m.gguf"), str(out), ",".join(map(str, PROMPT)), PYCOMPAT_KERNEL=kernel)
        logits[path] = np.load(out)
    if "avx2" not in logits:
        pytest.skip("this CPU runs the portable kernels only")
    simd, portable = logits["avx2"], logits["portable"]
    err = float(np.abs(simd - portable).max() / np.abs(portable).max())
    assert err < TOLERANCE[kind], f"largest relative difference, AVX2 vs portable: {err:.2e}"


@pytest.mark.parametrize("kind", ["Q4_1", "F32"])
def test_the_thread_count_changes_no_bit(tmp_path, kind):
    # Threads split a matrix's rows and attention's (row, head) pairs, never one
    # sum, so any count gives the same bits. Exact comparisons between processes
    # rely on it: the server's greedy answer against the kernel's in the test
    # process (test_openai_sdk.py), whatever threads either was given.
    write_gguf_model(tmp_path / "m.gguf", CFG, random_weights(CFG, VOCAB, seed=15), kind)
    got = []
    for threads in ("1", "2", "3"):
        out = tmp_path / f"{threads}.npy"
        run_python(LOGITS, str(tmp_path / "m.gguf"), str(out), ",".join(map(str, PROMPT)), PYCOMPAT_THREADS=threads)
        got.append(np.load(out).tobytes())
    assert got[1] == got[0] and got[2] == got[0]
