"""Checking a feed before it publishes: run a sample through map, validate and de-identify.

``check_feed`` reads at most ``limit`` rows per mapping block, runs exactly the per-row work
of a real run (the same Preparer), publishes nothing and stores nothing, and reports what a
hospital IT person needs to fix the mapping: counts per resource, errors grouped by cause
with row keys, unmapped codes and units with their frequencies, and elements no
de-identification rule covers.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from deid.keys import Keyring
from deid.ruleset import load_ruleset
from hub.mapping.run import block_select
from hub.mapping.spec import load_mapping
from hub.prepare import Preparer, Rejected
from hub.sources.sql import SourceSchema, iter_batches


@dataclass
class BlockCheck:
    resource: str
    table: str
    rows: int = 0
    would_publish: int = 0
    would_quarantine: int = 0


@dataclass
class CauseGroup:
    cause: str
    count: int = 0
    rows: list[str] = field(default_factory=list)  # first row keys
    example: str = ""  # the first full reason


@dataclass
class FeedCheck:
    mapping: str
    blocks: list[BlockCheck]
    causes: list[CauseGroup]
    unmapped: list[tuple[str, str, int]]  # terminology, local value, count
    uncovered: list[tuple[str, int]]  # element path, count

    @property
    def quarantined(self) -> int:
        return sum(b.would_quarantine for b in self.blocks)

    def as_dict(self) -> dict:
        return {
            "mapping": self.mapping,
            "blocks": [b.__dict__ for b in self.blocks],
            "causes": [c.__dict__ for c in self.causes],
            "unmapped": [{"terminology": t, "value": v, "count": n} for t, v, n in self.unmapped],
            "uncovered": [{"element": e, "count": n} for e, n in self.uncovered],
            "would_quarantine": self.quarantined,
        }


def check_feed(
    mapping_path: Path, url: str, institution: str, ruleset_path: Path, zone: str = "recognition",
    keys: Keyring | None = None, limit: int = 1000, rows_per_cause: int = 5,
) -> FeedCheck:
    """Check one feed on a sample of at most limit rows per block. Without keys, a throwaway key is used."""
    mapping = load_mapping(mapping_path)
    ruleset = load_ruleset(ruleset_path, zone)
    preparer = Preparer(institution, keys or Keyring(os.urandom(32)), ruleset)
    engine = sa.create_engine(url)
    schema = SourceSchema(engine)
    blocks, groups = [], {}
    unmapped: Counter[tuple[str, str]] = Counter()
    try:
        for index, block in enumerate(mapping.blocks):
            compiled = preparer.compiled(str(mapping.path), index)
            check = BlockCheck(block.resource, block.table)
            blocks.append(check)
            select = block_select(compiled, schema).limit(limit)
            for rows in iter_batches(engine, select, min(limit, 5000)):
                batch = preparer.prepare(str(mapping.path), index, rows)
                for item in batch.items:
                    check.rows += 1
                    if not isinstance(item, Rejected):
                        check.would_publish += 1
                        continue
                    check.would_quarantine += 1
                    for p in item.problems:
                        cause = f"{p.location} {p.element}: {p.problem}"
                        group = groups.setdefault(cause, CauseGroup(cause, example=p.reason(item.label)))
                        group.count += 1
                        if len(group.rows) < rows_per_cause:
                            group.rows.append(item.label)
            unmapped.update(compiled.unmapped)
    finally:
        engine.dispose()
    return FeedCheck(
        mapping=mapping.label,
        blocks=blocks,
        causes=sorted(groups.values(), key=lambda g: -g.count),
        unmapped=[(t, v, n) for (t, v), n in unmapped.most_common()],
        uncovered=preparer.deid.stats.uncovered.most_common(),
    )
