"""Every Parquet or Iceberg write of hub goes through the one sink (hub/lakehouse/sink.py, the writer it makes
and the position deletes that writer stages).

The test reads the source of hub/, deid/ and dagster_project/ and lists every call that
writes data: Parquet files (``write_table``, ``to_parquet`` ...) and Iceberg tables
(``append``, ``delete``, ``overwrite``, ``add_files`` ... on a table or transaction). Any
such call outside the sink fails it, except the few listed in KNOWN_BYPASSES, each with why
it is still there; an entry that no longer exists fails too, so the list only shrinks.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

SINK = {"hub/lakehouse/sink.py", "hub/lakehouse/writer.py", "hub/lakehouse/positions.py"}
#: Calls that write data whatever they are called on.
WRITES = {"write_table", "write_to_dataset", "to_parquet", "write_parquet", "write_csv", "write_dataset",
          "overwrite", "add_files", "dynamic_partition_overwrite", "upsert"}
#: Calls that write data when called on an Iceberg table or transaction.
TABLE_WRITES = {"append", "delete"}
SINK_RECEIVERS = {"pub", "publication"}  # calls on a Publication are the sink itself

#: (file, function) -> why it still writes outside the sink. Remove an entry when it moves.
KNOWN_BYPASSES = {
    ("hub/cli/views.py", "_write_local"): "`hub views run --ndjson F --output` flattens a local file, not lakehouse data",
    ("hub/research.py", "_roll_back"): "a failed release's recount undoes its replacement of an empty table with a delete",
}


def _receiver(node: ast.expr) -> str:
    while isinstance(node, ast.Attribute | ast.Call):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else ""


def _writes(path: Path) -> list[tuple[str, int, str]]:
    """(enclosing function, line, call) of every data write in a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else function
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute):
                attr, receiver = child.func.attr, _receiver(child.func.value)
                on_table = "table" in receiver.lower() or receiver in ("tx", "target", "transaction")
                if receiver not in SINK_RECEIVERS and (attr in WRITES or (attr in TABLE_WRITES and on_table)):
                    out.append((function, child.lineno, f"{receiver}.{attr}"))
            visit(child, name)

    visit(tree, "<module>")
    return out


def test_every_data_write_is_in_the_sink():
    found: dict[tuple[str, str], list[str]] = {}
    for package in ("hub", "deid", "dagster_project"):
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel in SINK:
                continue
            for function, line, call in _writes(path):
                found.setdefault((rel, function), []).append(f"{rel}:{line} {call}")
    unexpected = {k: v for k, v in found.items() if k not in KNOWN_BYPASSES}
    assert not unexpected, f"data written outside hub/lakehouse/sink.py (use a Publication): {sorted(unexpected.values())}"
    moved = sorted(set(KNOWN_BYPASSES) - set(found))
    assert not moved, f"no longer writing outside the sink, remove from KNOWN_BYPASSES: {moved}"


def test_the_detector_sees_a_write_outside_the_sink(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f(table, pq, data, pub):\n    table.append(data)\n    pq.write_table(data, 'x')\n"
                      "    pub.write_parquet(data, 'y')\n    rows = []\n    rows.append(1)\n", encoding="utf-8")
    assert _writes(module) == [("f", 2, "table.append"), ("f", 3, "pq.write_table")]
