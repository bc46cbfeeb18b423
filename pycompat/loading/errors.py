"""The one error type for model files that cannot be used, and the file mapping
both weight formats share."""

from __future__ import annotations

import mmap
from pathlib import Path


class ModelFileError(Exception):
    """A model file or directory is unreadable, truncated or unsupported.

    ``str()`` is a single line naming the file and what is wrong, fit to show
    a user as it is.
    """

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def map_file(path: Path, min_size: int, kind: str) -> tuple[mmap.mmap, int]:
    """Maps ``path`` read-only; returns the mapping and its size.

    Raises ModelFileError if it cannot be opened or is shorter than ``min_size``.
    """
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size < min_size:
                raise ModelFileError(path, f"too short to be {kind} ({size} bytes)")
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), size
    except OSError as e:
        raise ModelFileError(path, e.strerror or str(e)) from None
