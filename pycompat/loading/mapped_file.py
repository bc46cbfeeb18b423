"""The read-only file mapping both weight formats (GGUF, safetensors) read through."""

from __future__ import annotations

import mmap
from pathlib import Path

from pycompat.loading.errors import ModelFileError


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
