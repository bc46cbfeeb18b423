import sys
from pathlib import Path

# Test helpers (reference.py, tiny_models.py, openapi.py) import as top-level modules.
sys.path.insert(0, str(Path(__file__).parent))

import re
import subprocess
import time
from contextlib import contextmanager
from functools import partial

import pytest

SERVER_CONTEXT = 1024


def pytest_report_header(config):
    import openapi

    if openapi.SPEC_PRESENT:
        return f"responses validated against {openapi.SPEC_PATH}"
    return f"OpenAI's OpenAPI spec not found at {openapi.SPEC_PATH}: responses are NOT schema-validated (set PYCOMPAT_OPENAPI_SPEC)"  # small, so the context-overflow tests need small prompts


def peak_rss_bytes(pid: int) -> int:
    """A process's peak resident set (Linux: VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@contextmanager
def running_server(log_path: Path, *args: str):
    """Starts `pycompat serve --port 0 ARGS`; yields (process, http://127.0.0.1:PORT/v1).
    State goes to a file beside the log unless ARGS name one (never the user's own)."""
    if "--state" not in args:
        args = (*args, "--state", str(log_path.with_suffix(".state.sqlite3")))
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pycompat", "serve", "--port", "0", *args], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            text = log_path.read_text()
            match = re.search(r"serving .* at (http://\S+/v1)", text)
            if match:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{text}")
            time.sleep(0.1)
        yield proc, match.group(1)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        output = log_path.read_text()
        assert "Traceback" not in output, f"the server logged a traceback:\n{output}"


@pytest.fixture
async def start_http_server(nursery):
    """Starts the HTTP layer alone on a free port; returns ``start(handler, limits=None) -> port``."""
    from pycompat.api.openai.errors import error_body
    from pycompat.http.server import Limits, serve

    async def start(handler, limits=None) -> int:
        listeners = await nursery.start(partial(serve, handler, error_body, "127.0.0.1", 0, limits or Limits()))
        return listeners[0].socket.getsockname()[1]

    return start


@pytest.fixture(scope="session")
def server_url(tmp_path_factory):
    """A real `pycompat serve` of the default model on a free loopback port; yields http://127.0.0.1:PORT/v1."""
    log_path = tmp_path_factory.mktemp("server") / "serve.log"
    with running_server(log_path, "--alias", "gpt-3.5-turbo", "--context-length", str(SERVER_CONTEXT)) as (_, url):
        yield url


@pytest.fixture(scope="session")
def default_model():
    """The bundled SmolLM2 loaded in this process (for kernel-level tests)."""
    from pycompat.loading.load import load_model

    return load_model(context_length=2048)


@pytest.fixture(scope="session")
def llama_cpp_model():
    """llama.cpp (through llama-cpp-python) on the bundled GGUF; the peer tests skip without it."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from pycompat.loading.load import default_model_path

    return llama_cpp.Llama(model_path=str(default_model_path()), n_ctx=2048, n_batch=1024, logits_all=True, n_threads=2, verbose=False)
