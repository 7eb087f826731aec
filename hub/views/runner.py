"""SQL-on-FHIR v2 ViewDefinitions: flatten FHIR resources into rows.

Supports select, column (with collection), forEach, forEachOrNull, repeat, unionAll, nested
selects, where and typed constants, over the FHIRPath subset in ``fhirpath.py``. A view is
validated before it runs; problems raise ViewError.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import Any

from hub.views.fhirpath import Evaluator, FhirPathError, Typed, parse


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
    v = v.value if isinstance(v, Typed) else v
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() and "." not in str(v) else float(v)
    return v


class ViewRunner:
    """Runs one validated ViewDefinition over resources, yielding rows as dicts."""

    def __init__(self, view: dict):
        validate(view)
        self.view = view
        self.resource = view["resource"]
        self.ev = Evaluator({c["name"]: _constant_value(c) for c in view.get("constant", [])})
        self.columns = view_columns(view)

    def rows(self, resources: Iterable[dict]) -> Iterator[dict]:
        for res in resources:
            if res.get("resourceType") != self.resource:
                continue
            if not self._where(res):
                continue
            for row in self._select_all(self.view["select"], res):
                yield {c: row.get(c) for c in self.columns}

    def _where(self, res: dict) -> bool:
        for w in self.view.get("where", []):
            out = self.ev.eval(w["path"], [res])
            if len(out) > 1 or (out and not isinstance(_plain(out[0]), bool)):
                raise ViewError(f"where path {w['path']!r} does not resolve to a boolean")
            if not out or _plain(out[0]) is not True:
                return False
        return True

    def _select_all(self, selects: list[dict], focus: Any) -> list[dict]:
        rows = [{}]
        for s in selects:
            rows = [{**a, **b} for a in rows for b in self._select(s, focus)]
        return rows

    def _select(self, select: dict, focus: Any) -> list[dict]:
        if "forEach" in select or "forEachOrNull" in select:
            path = select.get("forEach", select.get("forEachOrNull"))
            items = self.ev.eval(path, [focus])
            if not items and "forEachOrNull" in select:
                return [{c: None for c in columns_of(select)}]
            return [r for item in items for r in self._rows_for(select, item)]
        if "repeat" in select:
            items, frontier = [], [focus]
            while frontier:
                nxt = [c for f in frontier for p in select["repeat"] for c in self.ev.eval(p, [f])]
                items += nxt
                frontier = nxt
            return [r for item in items for r in self._rows_for(select, item)]
        return self._rows_for(select, focus)

    def _rows_for(self, select: dict, focus: Any) -> list[dict]:
        row: dict = {}
        for col in select.get("column", []):
            try:
                values = self.ev.eval(col["path"], [focus])
            except FhirPathError as exc:
                raise ViewError(str(exc)) from None
            if col.get("collection"):
                row[col["name"]] = [_plain(v) for v in values]
            elif len(values) > 1:
                raise ViewError(f"column {col['name']!r} returned {len(values)} values; set collection: true")
            else:
                row[col["name"]] = _plain(values[0]) if values else None
        rows = [row]
        if select.get("select"):
            rows = [{**a, **b} for a in rows for b in self._select_all(select["select"], focus)]
        if select.get("unionAll"):
            union = [r for u in select["unionAll"] for r in self._select(u, focus)]
            rows = [{**a, **b} for a in rows for b in union]
        return rows


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
