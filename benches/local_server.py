"""Starting `pycompat serve` on a free port for a benchmark, and waiting until it serves."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path


def start_server(log: Path, *args: str, env: dict | None = None, cwd: Path | None = None) -> tuple[subprocess.Popen, str]:
    """`python -m pycompat serve --port 0 ARGS`, its output in ``log``; returns the
    process and its root URL (http://127.0.0.1:PORT) once it serves. This
    checkout's server keeps no state unless ARGS name a --state: warming the
    user's stored histories at start would take CPU from the measurements."""
    if cwd is None and "--state" not in args:
        args = (*args, "--state", "none")
    out = open(log, "w")
    proc = subprocess.Popen([sys.executable, "-m", "pycompat", "serve", "--port", "0", *args],
                            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        m = re.search(r"serving .* at (http://\S+)/v1", log.read_text())
        if m:
            return proc, m.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise SystemExit(f"server did not start:\n{log.read_text()}")
