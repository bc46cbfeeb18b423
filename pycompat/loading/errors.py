"""The one error type for model files that cannot be used."""

from __future__ import annotations

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
