"""StopMatcher: text before the first stop string, nothing of the stop string,
and nothing held back once it cannot start a stop string."""

from __future__ import annotations

import pytest

from pycompat.engine.stop import StopMatcher


@pytest.mark.parametrize(
    "stops, pieces, emitted, stopped",
    [
        ([], ["ab", "cd"], ["ab", "cd", ""], False),
        (["END"], ["abc", "E", "N", "D", "more"], ["abc", "", "", "", ""], True),
        (["END"], ["abc", "EN", "x"], ["abc", "", "ENx", ""], False),
        (["END"], ["xxENDyy"], ["xx"], True),
        (["\n\n", "User:"], ["Hi", "\n", "\n", "there"], ["Hi", "", "", ""], True),
        (["\n\n", "User:"], ["Hi", "\n", "U", "ser:"], ["Hi", "", "\n", ""], True),
        (["ab", "b"], ["xab"], ["x"], True),  # the earliest match wins
        (["aab"], ["a", "a", "a", "b"], ["", "", "a", ""], True),
        ([""], ["text"], ["text", ""], False),  # empty stop strings are ignored
        (["END"], ["E"], ["", "E"], False),  # held text comes out when generation ends
    ],
)
def test_stop_matcher(stops, pieces, emitted, stopped):
    m = StopMatcher(stops)
    out = [m.push(p) for p in pieces]
    if not m.stopped:
        out.append(m.flush())
    assert out == emitted and m.stopped == stopped
