"""Which handler answers a path: routes as path templates, mounted under prefixes.

A template is matched segment by segment against the percent-decoded path
(so ``%2F`` counts as ``/``, as it always has here):

- ``/models``: literal segments match themselves exactly (case matters);
- ``/chat/completions/{completion_id}/messages``: ``{name}`` matches one
  non-empty segment, passed to the handler as ``name=...``;
- ``/models/{model...}``: ``{name...}``, last only, matches the rest of the
  path (one segment or more, slashes and all): model ids such as ``org/model``.

Trailing slashes are ignored (``/v1/models/`` is ``/v1/models``). When
several templates match, the most specific wins: position by position, a
literal beats ``{name}``, which beats ``{name...}``. The winning template's
methods decide: HEAD is answered wherever GET is, by the GET handler;
OPTIONS is always allowed (the App answers it); any other method is a 405
with the ``allow`` list.

A dialect's routes are written without its prefix and mounted under each of
its prefixes (``/v1``); ``owner`` (its dialect) comes back with each match, so
errors on its routes are rendered in its shape.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from pycompat.http.messages import Response

Handler = Callable[..., Awaitable[Response]]  # handler(request, **params)

_LITERAL, _PARAM, _REST = 0, 1, 2  # segment kinds, in the order they win
_NAME = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)(\.\.\.)?\}$")


@dataclass(frozen=True)
class Route:
    method: str
    template: str  # "/models/{model...}"
    handler: Handler


@dataclass
class Match:
    """A path's route: its handlers by method, the parameters taken from the path, and who owns it."""

    methods: dict[str, Handler]
    params: dict[str, str]
    owner: object = None
    template: str = ""  # the route's template with its prefix ("/v1/models/{model...}"), for metrics

    @property
    def allow(self) -> str:
        """The Allow header: the methods in the order they were added, HEAD where GET is, then OPTIONS."""
        return ", ".join([*self.methods, *(["HEAD"] if "GET" in self.methods else []), "OPTIONS"])

    def handler(self, method: str) -> Handler | None:
        """The handler for ``method`` (HEAD: GET's), or None when the method is not allowed."""
        return self.methods.get("GET" if method == "HEAD" else method)


@dataclass
class _Template:
    text: str
    parts: tuple[tuple[int, str], ...]  # (kind, literal text or parameter name)
    owner: object
    methods: dict[str, Handler] = field(default_factory=dict)

    @property
    def shape(self) -> tuple:
        """What the template matches, whatever its parameters are named."""
        return tuple((kind, text if kind == _LITERAL else "") for kind, text in self.parts)

    @property
    def specificity(self) -> tuple[int, ...]:
        """Sorts templates so that the first one that matches is the most specific."""
        return tuple(kind for kind, _ in self.parts) + (-1,)

    def match(self, segments: list[str]) -> dict[str, str] | None:
        params = {}
        for i, (kind, text) in enumerate(self.parts):
            if kind == _REST:
                rest = segments[i:]
                if not rest:
                    return None
                params[text] = "/".join(rest)
                return params
            if i >= len(segments):
                return None
            segment = segments[i]
            if kind == _LITERAL:
                if segment != text:
                    return None
            elif not segment:
                return None
            else:
                params[text] = segment
        return params if len(segments) == len(self.parts) else None


def _segments(path: str) -> list[str]:
    return path.rstrip("/").split("/")[1:]


def _parse(template: str) -> tuple[tuple[int, str], ...]:
    if not template.startswith("/"):
        raise ValueError(f"a route template starts with '/': {template!r}")
    parts = []
    segments = _segments(template)
    for i, segment in enumerate(segments):
        if "{" not in segment and "}" not in segment:
            parts.append((_LITERAL, segment))
            continue
        m = _NAME.match(segment)
        if m is None:
            raise ValueError(f"a parameter is a whole segment, {{name}} or {{name...}}: {template!r}")
        if m[2] and i != len(segments) - 1:
            raise ValueError(f"{{{m[1]}...}} takes the rest of the path, so it comes last: {template!r}")
        parts.append((_REST if m[2] else _PARAM, m[1]))
    names = [text for kind, text in parts if kind != _LITERAL]
    if len(names) != len(set(names)):
        raise ValueError(f"a parameter name appears twice: {template!r}")
    return tuple(parts)


class Router:
    """Routes by path template. Exact paths are one dict lookup; templates with
    parameters are tried most specific first."""

    def __init__(self) -> None:
        self._exact: dict[str, _Template] = {}
        self._templates: list[_Template] = []

    def add(self, routes: Iterable[Route], prefixes: Iterable[str] = ("",), owner: object = None) -> None:
        """Serves ``routes`` under each of ``prefixes`` (``"/v1"``; ``""`` for none).
        Raises ValueError for a malformed template, or one that clashes with a route already added."""
        routes = list(routes)
        for prefix in prefixes:
            for route in routes:
                self._add(route.method, prefix + route.template, route.handler, owner)

    def _add(self, method: str, text: str, handler: Handler, owner: object) -> None:
        new = _Template(text, _parse(text), owner)
        same = next((t for t in [*self._exact.values(), *self._templates] if t.shape == new.shape), None)
        if same is None:
            if any(kind != _LITERAL for kind, _ in new.parts):
                self._templates.append(new)
                self._templates.sort(key=lambda t: t.specificity)
            else:
                self._exact["/" + "/".join(text for _, text in new.parts)] = new
            same = new
        elif same.parts != new.parts or same.owner is not owner:
            raise ValueError(f"{text!r} matches the same paths as {same.text!r}")
        if method in same.methods:
            raise ValueError(f"{method} {text} is routed twice")
        same.methods[method] = handler

    def resolve(self, path: str) -> Match | None:
        """The route for a percent-decoded ``path``, or None (a 404)."""
        if not path.startswith("/"):
            return None
        exact = self._exact.get(path.rstrip("/") or "/")
        if exact is not None:
            return Match(exact.methods, {}, exact.owner, exact.text)
        segments = _segments(path)
        for template in self._templates:
            params = template.match(segments)
            if params is not None:
                return Match(template.methods, params, template.owner, template.text)
        return None

