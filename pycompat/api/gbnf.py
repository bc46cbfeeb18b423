"""llama.cpp's GBNF grammars, rewritten in the Lark dialect the grammar engine
(llguidance) compiles.

GBNF: ``name ::= expression`` rules (``root`` is where output starts),
``"literals"`` and ``[character classes]`` with C-style escapes, ``.`` for any
character, ``( )`` groups, ``|``, ``* + ?`` and ``{m}``, ``{m,}``, ``{m,n}``
repetition, ``#`` comments. A rule's expression runs until the next rule.
The rewrite keeps every construct as it is, spelling literals and classes
unambiguously (each class character as a ``\\x{...}`` escape), so the Lark
grammar accepts exactly the texts the GBNF one does.
"""

from __future__ import annotations

import json
import re


class GbnfError(ValueError):
    """The text is not a GBNF grammar this rewrite reads; the message says where."""


_NAME = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "[": "[", "]": "]", "-": "-", "^": "^", "/": "/"}


def looks_like_gbnf(text: str) -> bool:
    return "::=" in text


def to_lark(source: str) -> str:
    """The Lark grammar for GBNF ``source``. Raises GbnfError."""
    tokens = _tokens(source)
    rules: list[tuple[str, list[tuple[str, str]]]] = []
    i = 0
    while i < len(tokens):
        if not (tokens[i][0] == "name" and i + 1 < len(tokens) and tokens[i + 1][0] == "define"):
            raise GbnfError(f"expected 'name ::=' but found {tokens[i][1]!r}")
        name, i = tokens[i][1], i + 2
        body_start = i
        while i < len(tokens) and not (tokens[i][0] == "name" and i + 1 < len(tokens) and tokens[i + 1][0] == "define"):
            i += 1
        rules.append((name, tokens[body_start:i]))
    names = {}
    for name, _ in rules:
        names.setdefault(name, "r_" + re.sub(r"[^a-z0-9_]", "_", name.lower()) + f"_{len(names)}")
    if "root" not in names:
        raise GbnfError("the grammar has no 'root' rule")
    lines = [f"start: {names['root']}"]
    bodies: dict[str, list[str]] = {}
    for name, body in rules:
        if not body:
            raise GbnfError(f"rule {name!r} is empty")
        parts = []
        for kind, value in body:
            if kind == "name":
                if value not in names:
                    raise GbnfError(f"rule {value!r} is used but never defined")
                parts.append(names[value])
            else:
                parts.append(value)
        bodies.setdefault(names[name], []).append(" ".join(parts))
    for lark_name, alternatives in bodies.items():  # a rule defined twice: either definition
        lines.append(f"{lark_name}: " + (alternatives[0] if len(alternatives) == 1 else " | ".join(f"({a})" for a in alternatives)))
    return "\n".join(lines)


def _tokens(source: str) -> list[tuple[str, str]]:
    """GBNF's tokens as (kind, Lark text): names, '::=', literals, classes and operators."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(source)
    while i < n:
        ch = source[i]
        if ch.isspace():
            i += 1
        elif ch == "#":
            while i < n and source[i] != "\n":
                i += 1
        elif source.startswith("::=", i):
            out.append(("define", "::="))
            i += 3
        elif ch == '"':
            text, i = _literal(source, i + 1)
            out.append(("literal", json.dumps(text, ensure_ascii=False)))
        elif ch == "[":
            cls, i = _char_class(source, i + 1)
            out.append(("class", cls))
        elif ch == ".":
            out.append(("class", "/(?s:.)/"))
            i += 1
        elif ch in "()|*+?":
            out.append(("op", ch))
            i += 1
        elif ch == "{":
            end = source.find("}", i)
            if end < 0 or not re.fullmatch(r"\s*\d*\s*(,\s*\d*\s*)?", source[i + 1 : end]):
                raise GbnfError(f"bad repetition at offset {i}")
            out.append(("op", source[i : end + 1].replace(" ", "")))
            i = end + 1
        elif m := _NAME.match(source, i):
            out.append(("name", m.group()))
            i = m.end()
        else:
            raise GbnfError(f"unexpected {ch!r} at offset {i}")
    return out


def _escape(source: str, i: int) -> tuple[str, int]:
    """The character of the escape starting after the backslash at ``i``, and where it ends."""
    if i >= len(source):
        raise GbnfError("the grammar ends inside an escape")
    c = source[i]
    widths = {"x": 2, "u": 4, "U": 8}
    if c in widths:
        digits = source[i + 1 : i + 1 + widths[c]]
        if len(digits) != widths[c] or not all(d in "0123456789abcdefABCDEF" for d in digits):
            raise GbnfError(f"bad \\{c} escape at offset {i}")
        code = int(digits, 16)
        if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            raise GbnfError(f"\\{c}{digits} at offset {i} is not a Unicode character")
        return chr(code), i + 1 + widths[c]
    if c in _ESCAPES:
        return _ESCAPES[c], i + 1
    raise GbnfError(f"unknown escape \\{c} at offset {i}")


def _literal(source: str, i: int) -> tuple[str, int]:
    chars = []
    while True:
        if i >= len(source) or source[i] == "\n":
            raise GbnfError("a string literal is not closed")
        c = source[i]
        if c == '"':
            return "".join(chars), i + 1
        if c == "\\":
            c, i = _escape(source, i + 1)
            chars.append(c)
        else:
            chars.append(c)
            i += 1


def _char_class(source: str, i: int) -> tuple[str, int]:
    negated = i < len(source) and source[i] == "^"
    i += negated
    elems: list[tuple[str, bool]] = []  # (character, whether it is an unescaped '-')
    while True:
        if i >= len(source):
            raise GbnfError("a character class is not closed")
        c = source[i]
        if c == "]" and elems:
            i += 1
            break
        if c == "\\":
            c, i = _escape(source, i + 1)
            elems.append((c, False))
        else:
            elems.append((c, c == "-"))
            i += 1
    items, k = [], 0
    while k < len(elems):
        if k + 2 < len(elems) and elems[k + 1][1]:  # a-z (a '-' first or last is itself)
            items.append(f"{_hex(elems[k][0])}-{_hex(elems[k + 2][0])}")
            k += 3
        else:
            items.append(_hex(elems[k][0]))
            k += 1
    return f"/[{'^' if negated else ''}{''.join(items)}]/", i


def _hex(c: str) -> str:
    return f"\\x{{{ord(c):X}}}"
