"""The FHIRPath subset SQL-on-FHIR v2 requires: paths, indexers, where, ofType, first, exists,
empty, join, extension, getResourceKey, getReferenceKey, boundary functions, constants,
comparison, boolean logic and arithmetic.

Expressions are parsed once into a small tree and evaluated over collections (lists), as
FHIRPath defines: a path on an empty collection is empty, and `=` with an empty side is
empty. Choice elements (`value` for `valueQuantity`) carry their type so ofType() can pick.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any


class FhirPathError(ValueError):
    """An expression outside the supported subset, or one that cannot be evaluated."""


@dataclass(frozen=True)
class Typed:
    """A value reached through a choice element, with its FHIR type (Quantity, string ...)."""

    value: Any
    type: str


_TOKEN = re.compile(r"""\s*(?:
    (?P<string>'(?:[^'\\]|\\.)*')|(?P<number>\d+(?:\.\d+)?)|(?P<const>%[A-Za-z_][A-Za-z0-9_]*)|
    (?P<op><=|>=|!=|[=<>+\-*/.,()\[\]])|(?P<name>\$?[A-Za-z_][A-Za-z0-9_]*|`[^`]+`))""", re.X)


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise FhirPathError(f"cannot read FHIRPath at {text[pos:pos + 10]!r} in {text!r}")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Parser:
    PREC = [("or",), ("and",), ("=", "!="), ("<", "<=", ">", ">="), ("+", "-"), ("*", "/")]

    def __init__(self, text: str):
        self.text, self.toks, self.i = text, _tokens(text), 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            raise FhirPathError(f"expected {value or 'more'} in {self.text!r}")
        self.i += 1
        return tok

    def parse(self):
        node = self.binary(0)
        if self.peek() is not None:
            raise FhirPathError(f"unexpected {self.peek()[1]!r} in {self.text!r}")
        return node

    def binary(self, level: int):
        if level == len(self.PREC):
            return self.postfix()
        left = self.binary(level + 1)
        while (tok := self.peek()) is not None and tok[1] in self.PREC[level] and tok[0] in ("op", "name"):
            self.take()
            left = ("op", tok[1], left, self.binary(level + 1))
        return left

    def postfix(self):
        node = self.term()
        while (tok := self.peek()) is not None and tok[1] in (".", "["):
            self.take()
            if tok[1] == "[":
                node = ("index", node, self.binary(0))
                self.take("]")
            else:
                node = self.invocation(node)
        return node

    def invocation(self, focus):
        kind, name = self.take()
        if kind != "name":
            raise FhirPathError(f"expected a name after '.' in {self.text!r}")
        name = name.strip("`")
        if self.peek() == ("op", "("):
            self.take("(")
            args = []
            while self.peek() != ("op", ")"):
                args.append(self.binary(0))
                if self.peek() == ("op", ","):
                    self.take(",")
            self.take(")")
            return ("call", name, focus, args)
        return ("member", name, focus)

    def term(self):
        kind, value = self.take()
        if kind == "string":
            return ("literal", re.sub(r"\\(.)", r"\1", value[1:-1]))
        if kind == "number":
            return ("literal", Decimal(value) if "." in value else int(value))
        if kind == "const":
            return ("const", value[1:])
        if kind == "op" and value == "(":
            node = self.binary(0)
            self.take(")")
            return node
        if kind == "op" and value == "-":
            return ("op", "-", ("literal", 0), self.postfix())
        if kind == "name":
            if value in ("true", "false"):
                return ("literal", value == "true")
            if value == "$this":
                return ("this",)
            self.i -= 1
            return self.invocation(("this",))
        raise FhirPathError(f"unexpected {value!r} in {self.text!r}")


_cache: dict[str, Any] = {}


def parse(text: str):
    if text not in _cache:
        _cache[text] = _Parser(text).parse()
    return _cache[text]


def _unwrap(v: Any) -> Any:
    return v.value if isinstance(v, Typed) else v


def _children(item: Any, name: str) -> list[Any]:
    item = _unwrap(item)
    if not isinstance(item, dict):
        return []
    if name in item:
        v = item[name]
        return list(v) if isinstance(v, list) else [v]
    out = []
    for key, v in item.items():  # choice element: value -> valueQuantity
        if key.startswith(name) and key[len(name):len(name) + 1].isupper():
            for x in v if isinstance(v, list) else [v]:
                out.append(Typed(x, key[len(name):]))
    return out


_PRIMITIVE = {"string": str, "boolean": bool, "integer": int, "decimal": (Decimal, float)}


def _is_type(item: Any, type_name: str) -> bool:
    if isinstance(item, Typed):
        return item.type.lower() == type_name.lower()
    py = _PRIMITIVE.get(type_name.lower())
    if py is None:
        return isinstance(item, dict) and item.get("resourceType") == type_name
    return isinstance(item, py) and not (py is int and isinstance(item, bool))


def _single(coll: list, what: str) -> Any:
    if len(coll) > 1:
        raise FhirPathError(f"{what} needs a single value, got {len(coll)}")
    return _unwrap(coll[0]) if coll else None


def _boundary(item: Any, high: bool) -> Any:
    """lowBoundary()/highBoundary(): the range a value of its precision stands for."""
    type_name = item.type.lower() if isinstance(item, Typed) else ""
    value = _unwrap(item)
    if isinstance(value, (Decimal, int)) and not isinstance(value, bool):
        if isinstance(value, int) or type_name == "integer":
            return None  # integers have no boundaries to compute here (experimental in the spec)
        exp = value.as_tuple().exponent
        return value + (Decimal(5).scaleb(exp - 1) if high else -Decimal(5).scaleb(exp - 1))
    if not isinstance(value, str):
        return None
    import calendar

    date_like = type_name in ("datetime", "instant") or "T" in value
    m = re.fullmatch(r"(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?", value)
    if m and (type_name in ("date", "datetime", "") or date_like):
        y = int(m.group(1))
        mo = int(m.group(2)) if m.group(2) else (12 if high else 1)
        d = int(m.group(3)) if m.group(3) else (calendar.monthrange(y, mo)[1] if high else 1)
        day = f"{y:04d}-{mo:02d}-{d:02d}"
        if type_name == "datetime":
            return f"{day}T23:59:59.999-12:00" if high else f"{day}T00:00:00.000+14:00"
        return day
    if re.fullmatch(r"\d{2}:\d{2}(:\d{2})?", value):
        parts = value.split(":")
        if len(parts) == 2:
            return f"{value}:59.999" if high else f"{value}:00.000"
        return f"{value}.999" if high else f"{value}.000"
    return value


class Evaluator:
    """Evaluates parsed expressions with a resource's context and the view's constants."""

    def __init__(self, constants: dict[str, Any] | None = None):
        self.constants = constants or {}

    def eval(self, text_or_node, focus: list[Any]) -> list[Any]:
        node = parse(text_or_node) if isinstance(text_or_node, str) else text_or_node
        return self._eval(node, focus)

    def _eval(self, node, focus: list[Any]) -> list[Any]:
        kind = node[0]
        if kind == "this":
            return focus
        if kind == "literal":
            return [node[1]]
        if kind == "const":
            if node[1] not in self.constants:
                raise FhirPathError(f"unknown constant %{node[1]}")
            v = self.constants[node[1]]
            return list(v) if isinstance(v, list) else [v]
        if kind == "member":
            return [c for item in self._eval(node[2], focus) for c in _children(item, node[1])]
        if kind == "index":
            coll = self._eval(node[1], focus)
            idx = _single(self._eval(node[2], focus), "an index")
            return [coll[idx]] if isinstance(idx, int) and 0 <= idx < len(coll) else []
        if kind == "call":
            return self._call(node[1], self._eval(node[2], focus), node[3])
        if kind == "op":
            return self._op(node[1], node[2], node[3], focus)
        raise FhirPathError(f"unsupported node {kind}")

    def _call(self, name: str, coll: list[Any], args: list) -> list[Any]:
        if name == "first":
            return coll[:1]
        if name == "exists":
            if args:
                coll = [x for x in coll if self._true(self._eval(args[0], [x]))]
            return [bool(coll)]
        if name == "empty":
            return [not coll]
        if name == "not":
            v = _single(coll, "not()")
            return [] if v is None else [not v]
        if name == "where":
            return [x for x in coll if self._true(self._eval(args[0], [x]))]
        if name == "ofType":
            type_name = args[0][1] if args[0][0] == "member" else str(args[0][1])
            return [x for x in coll if _is_type(x, type_name)]
        if name == "join":
            sep = _single(self._eval(args[0], coll), "join separator") if args else ""
            return [(sep or "").join(str(_unwrap(x)) for x in coll)]
        if name == "extension":
            url = _single(self._eval(args[0], coll), "extension url")
            return [e for x in coll for e in _children(x, "extension") if isinstance(_unwrap(e), dict) and _unwrap(e).get("url") == url]
        if name == "getResourceKey":
            return [_unwrap(x).get("id") for x in coll if isinstance(_unwrap(x), dict) and _unwrap(x).get("id")]
        if name == "getReferenceKey":
            want = args[0][1] if args and args[0][0] == "member" else None
            out = []
            for x in coll:
                ref = _unwrap(x).get("reference", "") if isinstance(_unwrap(x), dict) else ""
                parts = ref.split("/")
                if len(parts) >= 2 and (want is None or parts[-2] == want):
                    out.append(parts[-1])
            return out
        if name in ("lowBoundary", "highBoundary"):
            return [b for x in coll if (b := _boundary(x, name == "highBoundary")) is not None]
        if name in ("count",):
            return [len(coll)]
        raise FhirPathError(f"function {name}() is not supported")

    @staticmethod
    def _true(coll: list[Any]) -> bool:
        return len(coll) == 1 and _unwrap(coll[0]) is True

    def _op(self, op: str, left, right, focus: list[Any]) -> list[Any]:
        if op in ("and", "or"):
            a = _single(self._eval(left, focus), op)
            b = _single(self._eval(right, focus), op)
            if op == "and":
                if a is False or b is False:
                    return [False]
                return [] if a is None or b is None else [True]
            if a is True or b is True:
                return [True]
            return [] if a is None or b is None else [False]
        a = _single(self._eval(left, focus), op)
        b = _single(self._eval(right, focus), op)
        if a is None or b is None:
            return []
        if isinstance(a, (int, Decimal)) and isinstance(b, (int, Decimal)) and not isinstance(a, bool) and not isinstance(b, bool):
            a, b = Decimal(a), Decimal(b)
        if op == "=":
            return [a == b]
        if op == "!=":
            return [a != b]
        try:
            if op == "<":
                return [a < b]
            if op == "<=":
                return [a <= b]
            if op == ">":
                return [a > b]
            if op == ">=":
                return [a >= b]
            if op == "+":
                return [a + b]
            if op == "-":
                return [a - b]
            if op == "*":
                return [a * b]
            if op == "/":
                return [] if b == 0 else [a / b]
        except TypeError as exc:
            raise FhirPathError(f"cannot apply {op} to {type(a).__name__} and {type(b).__name__}") from exc
        raise FhirPathError(f"unsupported operator {op}")
