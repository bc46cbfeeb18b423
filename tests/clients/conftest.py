"""One real `pycompat serve` of the default models for every client test, and what
the tests share: the model ids, and how a missing client is reported.

The clients are installed by `./scripts/dev test` (pinned there), never at test
time; a test whose client is missing is skipped with a reason that names the
client and says how to get it.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import running_server

CHAT_MODEL = "smollm2-135m-instruct"
EMBEDDING_MODEL = "all-minilm-l6-v2"
EMBEDDING_DIMENSIONS = 384
NODE_DIR = Path(__file__).parent / "node"


def pytest_collection_modifyitems(items):
    """Every test in tests/clients carries the `clients` marker (``-m "not clients"`` leaves them out)."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.clients)


def missing(client: str) -> str:
    """The skip reason for a client that is not installed."""
    return f"{client} is not installed: run ./scripts/dev test, which installs the clients tests/clients drives"


def require_module(module: str, client: str):
    """Imports a client's Python module, or skips the calling test module naming the client."""
    return pytest.importorskip(module, reason=missing(client))


def venv_script(name: str) -> Path:
    """A console script installed beside this Python (the `llm` CLI lives in .venv/bin)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.skip(missing(f"the `{name}` CLI"))
    return path


def node_package(package: str) -> Path:
    """node, with ``package`` installed in tests/clients/node by `npm ci`; skips naming whichever is missing."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH: the JavaScript clients need Node.js 20 or later")
    if not (NODE_DIR / "node_modules" / package / "package.json").exists():
        pytest.skip(missing(f"the npm package `{package}` (in tests/clients/node/node_modules)"))
    return Path(node)


@dataclass
class ClientServer:
    """A running server: ``base_url`` is http://127.0.0.1:PORT (clients that want /v1 add it: ``api_url``).

    It logs in JSON with ``--log-content``, so a test can check what a client
    really sent (``access_log``), not only what it handed back."""

    base_url: str
    log_path: Path

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/v1"

    def access_log(self) -> list[dict]:
        """Every access-log line so far, oldest first: path, status, prompt (the messages/input as sent), completion..."""
        lines = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if "path" in record and "status" in record:
                    lines.append(record)
        return lines

    def wait_for_request(self, matches, timeout: float = 10.0) -> dict:
        """The newest access line for which ``matches(line)`` is true. A stream's line is
        written as its last event goes out, so it may land just after the client returns."""
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.access_log() if matches(line)]
            if found:
                return found[-1]
            if time.monotonic() > deadline:
                raise AssertionError(f"no access-log line matched in {timeout} s; the log:\n{self.log_path.read_text()[-4000:]}")
            time.sleep(0.05)


@pytest.fixture(scope="session")
def client_server(tmp_path_factory) -> ClientServer:
    """`pycompat serve` of the default models (SmolLM2-135M-Instruct and all-MiniLM-L6-v2)
    on a free loopback port, shared by every test in tests/clients."""
    log_path = tmp_path_factory.mktemp("client-server") / "serve.log"
    with running_server(log_path, "--log-format", "json", "--log-content") as (_, url):
        yield ClientServer(base_url=url.removesuffix("/v1"), log_path=log_path)
