"""Request bodies parsed strictly: a bad number or a bomb is a 422 naming its field, never a 500.

Refused: integers beyond 64 bits (a 5000-digit number would cost seconds to convert),
NaN / Infinity (JSON has no such numbers; they slip past min/max checks), and nesting
deeper than MAX_DEPTH (found by a cheap scan before the parser recurses).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 32
MAX_INT = 2**64
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},]')


class BadJson(Exception):
    """422 entries ({loc, type, msg}) for a body that cannot be accepted."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors[0]["msg"])
        self.errors = errors


class _Refused:
    def __init__(self, kind: str, msg: str) -> None:
        self.kind, self.msg = kind, msg


def _int(text: str) -> Any:
    if len(text.lstrip("-")) > 20 or abs(int(text)) > MAX_INT:
        return _Refused(
            "int_range", f"integer out of range (at most {len(str(MAX_INT))} digits, |n| <= 2**64)"
        )
    return int(text)


def _float(text: str) -> Any:
    value = float(text)
    return value if math.isfinite(value) else _Refused("finite_number", "number must be finite")


def _constant(text: str) -> Any:
    return _Refused("finite_number", f"{text} is not a JSON number")


def _too_deep(raw: bytes) -> list[Any] | None:
    """The path to the first container nested deeper than MAX_DEPTH, or None."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return None
    stack: list[list[Any]] = []
    expect_key = False
    for m in _TOKEN.finditer(raw):
        tok = m.group()
        c = tok[:1]
        if c == b'"':
            if expect_key and stack and stack[-1][0] == "o":
                try:
                    stack[-1][1] = json.loads(tok)
                except ValueError:
                    stack[-1][1] = tok.decode("utf-8", "replace")[1:-1]
                expect_key = False
        elif c in b"{[":
            if len(stack) >= MAX_DEPTH:
                return [label for _, label in stack if label is not None]
            stack.append(["o", None] if c == b"{" else ["a", 0])
            expect_key = c == b"{"
        elif c in b"}]":
            if stack:
                stack.pop()
            expect_key = False
        elif stack:
            if stack[-1][0] == "a":
                stack[-1][1] += 1
            else:
                expect_key = True
    return None


def _refused(value: Any, loc: list[Any], out: list[dict[str, Any]]) -> None:
    if isinstance(value, _Refused):
        out.append(
            {"loc": loc, "type": value.kind, "msg": f"{'.'.join(map(str, loc[1:])) or 'body'}: {value.msg}"}
        )
    elif isinstance(value, dict):
        for k, v in value.items():
            _refused(v, [*loc, k], out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _refused(v, [*loc, i], out)


def loads(raw: bytes) -> Any:
    """The body as JSON ({} when empty), or BadJson with entries naming the offending fields."""
    if not raw:
        return {}
    path = _too_deep(raw)
    if path is not None:
        raise BadJson(
            [
                {
                    "loc": ["body", *path],
                    "type": "json_depth",
                    "msg": f"{'.'.join(map(str, path)) or 'body'}: nested deeper than {MAX_DEPTH} levels",
                }
            ]
        )
    try:
        data = json.loads(raw, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadJson([{"loc": ["body"], "msg": f"invalid JSON: {exc}", "type": "json_invalid"}]) from None
    errors: list[dict[str, Any]] = []
    _refused(data, ["body"], errors)
    if errors:
        raise BadJson(errors)
    return data
