"""Runs a golden scenario: input rows -> vendor schema in SQLite -> mapping -> resources and reasons."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa

from deid.keys import Keyring
from hub.demo import vendors
from hub.demo.generator import write_database
from hub.fhir.jsonio import dumps
from hub.mapping.compile import CompiledBlock
from hub.mapping.run import mapped_batches
from hub.mapping.spec import load_mapping
from hub.sources.sql import SourceSchema

REPO = Path(__file__).resolve().parents[2]
INSTITUTION = "golden-hospital"


def run_scenario(folder: Path, mappings: list[str], workdir: Path, keys: Keyring) -> tuple[dict[str, list[str]], list[dict]]:
    """Map a scenario's input; return canonical JSON lines per resource type and quarantine reasons."""
    resources: dict[str, list[str]] = {}
    reasons: list[dict] = []
    for name in mappings:
        tables = vendors.SCHEMAS[name]().tables
        rows = {t: json.loads((folder / "input" / f"{t}.json").read_text(encoding="utf-8")) for t in tables if (folder / "input" / f"{t}.json").exists()}
        url = f"sqlite:///{workdir / name}.db"
        write_database(url, name, rows)
        mapping = load_mapping(REPO / "mappings" / f"{name}.yaml")
        engine = sa.create_engine(url)
        schema = SourceSchema(engine)
        for block in mapping.blocks:
            compiled = CompiledBlock(mapping, block, INSTITUTION, keys)
            for batch in mapped_batches(compiled, engine, schema):
                for m in batch:
                    if m.resource is not None:
                        resources.setdefault(block.resource, []).append(dumps(m.resource))
                    else:
                        label = compiled.row_label(m.row)
                        reasons.append({"resource": block.resource, "row": label, "reasons": [p.reason(label) for p in m.problems]})
        engine.dispose()
    return {k: sorted(v) for k, v in resources.items()}, reasons
