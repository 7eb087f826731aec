"""SQL-on-FHIR v2 ViewDefinitions: flatten FHIR resources into rows.

Supports select, column (with collection), forEach, forEachOrNull, repeat, unionAll, nested
selects, where, typed constants and the ``%rowIndex`` environment variable (0-based position
in the enclosing forEach/forEachOrNull/repeat, 0 at the top level, inherited by unionAll
branches without an iteration of their own), over the FHIRPath of ``fhirpath.py``. A view is
validated (every path compiled) before it runs; problems raise ViewError, naming the path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import Any

from hub.views.fhirpath import Env, FhirPathError, FPDateTime, Node, Quantity, parse, wrap


class ViewError(ValueError):
    """A ViewDefinition that is invalid, or that cannot be evaluated on a resource."""


def _constant_value(c: dict) -> Any:
    for key, value in c.items():
        if key.startswith("value"):
            return Decimal(str(value)) if key == "valueDecimal" else value
    raise ViewError(f"constant {c.get('name')!r} has no value[x]")


def validate(view: dict) -> None:
    if not isinstance(view, dict) or not view.get("resource"):
        raise ViewError("a ViewDefinition needs a resource")
    if not view.get("select"):
        raise ViewError("a ViewDefinition needs at least one select")

    def check(select: dict) -> None:
        for key in ("forEach", "forEachOrNull"):
            if key in select and not isinstance(select[key], str):
                raise ViewError(f"{key} must be a FHIRPath string")
        if "forEach" in select and "forEachOrNull" in select:
            raise ViewError("a select has both forEach and forEachOrNull")
        for col in select.get("column", []):
            if not isinstance(col.get("path"), str) or not col.get("name"):
                raise ViewError("a column needs a name and a path")
            try:
                parse(col["path"])
            except FhirPathError as exc:
                raise ViewError(str(exc)) from None
        for sub in select.get("select", []) + select.get("unionAll", []):
            check(sub)
        if select.get("unionAll"):
            names = [tuple(columns_of(u)) for u in select["unionAll"]]
            if len(set(names)) > 1:
                raise ViewError("unionAll branches must have the same columns")

    for s in view["select"]:
        check(s)
    for w in view.get("where", []):
        if not isinstance(w, dict) or not isinstance(w.get("path"), str):
            raise ViewError("a where needs a path (a FHIRPath string)")
        try:
            parse(w["path"])
        except FhirPathError as exc:
            raise ViewError(str(exc)) from None


def columns_of(select: dict) -> list[str]:
    names = [c["name"] for c in select.get("column", [])]
    for sub in select.get("select", []):
        names += columns_of(sub)
    if select.get("unionAll"):
        names += columns_of(select["unionAll"][0])
    return names


def view_columns(view: dict) -> list[str]:
    return [n for s in view["select"] for n in columns_of(s)]


def _plain(v: Any) -> Any:
    if v.__class__ is Node:
        v = v.value
        if v.__class__ is str:
            return v
    if isinstance(v, (FPDateTime, Quantity)):
        return str(v)
    if isinstance(v, float):
        v = Decimal(repr(v))
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() and "." not in str(v) else float(v)
    return v


class ViewRunner:
    """Runs one validated ViewDefinition over resources, yielding rows as dicts."""

    def __init__(self, view: dict):
        validate(view)
        self.view = view
        self.resource = view["resource"]
        self.constants = {c["name"]: _constant_value(c) for c in view.get("constant", [])}
        self.columns = view_columns(view)
        self._where_fns = [(w["path"], parse(w["path"])) for w in view.get("where", [])]
        self._columns: dict[int, list[tuple]] = {}

    def _compiled(self, select: dict) -> list[tuple]:
        cols = self._columns.get(id(select))
        if cols is None:
            cols = [(c["name"], c["path"], parse(c["path"]), bool(c.get("collection"))) for c in select.get("column", [])]
            self._columns[id(select)] = cols
        return cols

    def _eval(self, path: str, focus: Any, env: Env, fn: Any = None) -> list:
        try:
            return (fn or parse(path))([focus], env)
        except FhirPathError as exc:
            msg = str(exc)
            raise ViewError(msg if msg.startswith("FHIRPath ") else f"FHIRPath {path!r}: {msg}") from None
        except RecursionError:
            raise ViewError(f"FHIRPath {path!r}: nested too deeply") from None

    def rows(self, resources: Iterable[dict]) -> Iterator[dict]:
        for res in resources:
            if res.get("resourceType") != self.resource:
                continue
            node = wrap(res)
            env = Env(self.constants, node)
            if not self._where(node, env):
                continue
            for row in self._select_all(self.view["select"], node, env):
                yield {c: row.get(c) for c in self.columns}

    def _where(self, node: Node, env: Env) -> bool:
        for path, fn in self._where_fns:
            out = self._eval(path, node, env, fn)
            if len(out) > 1 or (out and not isinstance(_plain(out[0]), bool)):
                raise ViewError(f"where path {path!r} does not resolve to a boolean")
            if not out or _plain(out[0]) is not True:
                return False
        return True

    def _select_all(self, selects: list[dict], focus: Any, env: Env) -> list[dict]:
        rows = [{}]
        for s in selects:
            rows = [{**a, **b} for a in rows for b in self._select(s, focus, env)]
        return rows

    def _select(self, select: dict, focus: Any, env: Env) -> list[dict]:
        if "forEach" in select or "forEachOrNull" in select:
            items = self._eval(select.get("forEach", select.get("forEachOrNull")), focus, env)
            if not items and "forEachOrNull" in select:
                return [_null_row(select)]
        elif "repeat" in select:
            items, frontier = [], [focus]
            while frontier:
                nxt = [c for f in frontier for p in select["repeat"] for c in self._eval(p, f, env)]
                items += nxt
                frontier = nxt
        else:
            return self._rows_for(select, focus, env)
        saved, out = env.row_index, []
        try:
            for i, item in enumerate(items):
                env.row_index = i
                out += self._rows_for(select, item, env)
        finally:
            env.row_index = saved
        return out

    def _rows_for(self, select: dict, focus: Any, env: Env) -> list[dict]:
        row: dict = {}
        for name, path, fn, collection in self._compiled(select):
            values = self._eval(path, focus, env, fn)
            if collection:
                row[name] = [_plain(v) for v in values]
            elif len(values) > 1:
                raise ViewError(f"column {name!r} returned {len(values)} values; set collection: true")
            else:
                row[name] = _plain(values[0]) if values else None
        rows = [row]
        if select.get("select"):
            rows = [{**a, **b} for a in rows for b in self._select_all(select["select"], focus, env)]
        if select.get("unionAll"):
            union = [r for u in select["unionAll"] for r in self._select(u, focus, env)]
            rows = [{**a, **b} for a in rows for b in union]
        return rows


def _null_row(select: dict) -> dict:
    """The row forEachOrNull gives for an empty collection: nulls, and 0 for %rowIndex columns."""
    row = {}
    for col in select.get("column", []):
        row[col["name"]] = 0 if col["path"].strip() == "%rowIndex" else None
    for sub in select.get("select", []):
        row.update(_null_row(sub))
    if select.get("unionAll"):
        row.update(_null_row(select["unionAll"][0]))
    return row


def run_view(view: dict, resources: Iterable[dict]) -> list[dict]:
    return list(ViewRunner(view).rows(resources))


def canonical(row: dict) -> str:
    return json.dumps(row, sort_keys=True, default=str)


def run_over_table(table, view: dict, snapshot_id: int | None = None, row_filter: str = "True"):
    """Run a view over an Iceberg table's resource JSON, batch by batch; returns an Arrow table."""
    import pyarrow as pa

    from hub.fhir.jsonio import loads

    runner = ViewRunner(view)
    scan = table.scan(snapshot_id=snapshot_id, row_filter=row_filter, selected_fields=("resource",))
    rows: list[dict] = []
    for batch in scan.to_arrow_batch_reader():
        rows.extend(runner.rows(loads(text) for text in batch.column("resource").to_pylist()))
    return pa.Table.from_pylist(rows) if rows else pa.table({c: pa.array([], pa.null()) for c in runner.columns})


_CODE_PATH_RE = re.compile(r"coding\.where\(\s*system\s*=\s*'([^']+)'\s*\)\.code\b")


def code_columns(view: dict) -> dict[str, str]:
    """{column: code system} for the view's columns that select a Coding's code under one system.

    The leak scan applies that system's exemptions (e.g. NDC) to those columns only.
    """
    out: dict[str, str] = {}

    def walk(selects: list) -> None:
        for sel in selects or []:
            for col in sel.get("column", []):
                m = _CODE_PATH_RE.search(col.get("path", ""))
                if m:
                    out[col["name"]] = m.group(1)
            walk(sel.get("select", []))
            walk(sel.get("unionAll", []))

    walk(view.get("select", []))
    return out
