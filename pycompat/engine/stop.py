"""Stop strings: cut generated text before the first occurrence of any of them,
even when one arrives split over several tokens, and never emit any part of one.

Text that might be the start of a stop string is held back until the next
piece decides it; what is emitted is therefore always final.
"""

from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: list[str]):
        self._stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False

    def push(self, piece: str) -> str:
        """Adds generated text; returns the part that is now safe to emit.
        After a stop string is found, ``stopped`` is True and the rest is dropped."""
        if self.stopped:
            return ""
        text = self._held + piece
        cut = min((i for i in (text.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return text[:cut]
        keep = self._longest_partial_suffix(text)
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep]

    def flush(self) -> str:
        """The held-back text, when generation ends without a stop string."""
        out, self._held = self._held, ""
        return "" if self.stopped else out

    def _longest_partial_suffix(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for s in self._stops:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best
