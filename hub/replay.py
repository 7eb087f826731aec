"""Quarantine replay: re-run quarantined rows through the current mapping after a fix.

Each open entry is decrypted to learn its source key; the row is read again from the
source (so a fix in the mapping or in the source data both count) and goes through the
same publish step as a normal run. Rows that now pass are published and their entries
resolved; rows that still fail get a new entry with the current reason, superseding the
old one. So the open quarantine is always exactly the rows not yet published.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import sqlalchemy as sa

from deid.keys import Keyring
from hub import quarantine
from hub.lineage import runrecord
from hub.mapping.run import block_select
from hub.pipeline import InstitutionRun, RunReport, feed_blocks
from hub.region import Region
from hub.sources.sql import iter_batches


@dataclass
class ReplayReport:
    run: RunReport | None
    published: int = 0
    still_quarantined: int = 0
    not_in_source: list[int] = field(default_factory=list)  # entries whose row is gone from the source
    no_block: list[int] = field(default_factory=list)  # entries whose feed/table/resource no mapping has now


def replay(region: Region, institution: str, keys: Keyring, entry_ids: list[int] | None = None) -> ReplayReport:
    """Replay the institution's open quarantine entries (or just entry_ids)."""
    engine = runrecord.connect(region.catalog_url)
    entries = quarantine.list_rows(engine, institution=institution, status="open", ids=entry_ids)
    out = ReplayReport(None)
    if not entries:
        return out
    run = InstitutionRun(region, institution, keys)
    status = "failed"
    try:
        works = {(w.feed.name, w.block.resource, w.block.table): w for w in feed_blocks(run.inst)}
        groups: dict[tuple, list[dict]] = defaultdict(list)
        for e in entries:
            groups[(e["feed"], e["resource_type"], e["source_table"])].append(e)
        for group_key, group in groups.items():
            work = works.get(group_key)
            if work is None:
                out.no_block.extend(e["id"] for e in group)
                continue
            compiled = run.pool.local.compiled(str(work.mapping.path), work.index)
            key_cols = [compiled.qualify(k) for k in work.block.key]
            wanted: dict[tuple, list[int]] = defaultdict(list)
            for e in group:
                payload = quarantine.open_row(engine, keys, e["id"], region.key_file)
                wanted[tuple(payload.get(c) for c in key_cols)].append(e["id"])
            rows = _fetch(work, compiled, key_cols, list(wanted))
            found = {tuple(r[compiled.columns.index(c)] for c in key_cols) for r in rows}
            count = run.publish(work, [rows] if rows else []).count
            out.published += count.published
            out.still_quarantined += count.quarantined
            out.not_in_source.extend(i for k, ids in wanted.items() if k not in found for i in ids)
        run.commit()
        status = "succeeded"
    finally:
        out.run = run.finish(status)
    return out


def _fetch(work, compiled, key_cols: list[str], keys: list[tuple]) -> list[tuple]:
    """The current source rows with these keys, through the block's own select (joins, unpivot)."""
    source = block_select(compiled, work.schema).subquery("replay_source")
    cols = [source.c[c] for c in key_cols]
    rows: list[tuple] = []
    for i in range(0, len(keys), 500):
        chunk = keys[i : i + 500]
        cond = sa.or_(*[sa.and_(*[col == v for col, v in zip(cols, k, strict=True)]) for k in chunk])
        for batch in iter_batches(work.engine, sa.select(source).where(cond)):
            rows.extend(batch)
    return rows
