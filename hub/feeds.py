"""Checking a feed before it publishes: run a sample through map, validate and de-identify.

``check_feed`` reads a sample of at most ``limit`` rows per mapping block, spread over the
whole table (every k-th row in key order, so the sample is not just the oldest rows, which
in many databases are the odd ones), runs exactly the per-row work
of a real run (the same Preparer), publishes nothing and stores nothing, and reports what a
hospital IT person needs to fix the mapping: counts per resource, errors grouped by cause
with row keys, unmapped codes and units with their frequencies, and elements no
de-identification rule covers. The rows that would publish are leak-scanned exactly as the
sink scans them (same detector, canaries and the ruleset's code-system exemptions), so a
false positive or a real leak shows up before publishing; hits are reported masked.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from deid.keys import Keyring
from deid.ruleset import load_ruleset
from hub.leakscan import Hit, Scanner, ScanResult, load_scan_policy
from hub.mapping.run import block_select
from hub.mapping.spec import load_mapping
from hub.prepare import Preparer, Rejected
from hub.sources.sql import SourceSchema, iter_batches


@dataclass
class BlockCheck:
    resource: str
    table: str
    rows: int = 0
    sample: str = ""  # how the rows were drawn, e.g. "every 12th of 11,880 rows in key order"
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
    leaks: list[Hit] = field(default_factory=list)  # masked: what the leak scan would block
    exempted: dict[str, dict[str, int]] = field(default_factory=dict)  # {code system: {pattern: values}}

    @property
    def quarantined(self) -> int:
        return sum(b.would_quarantine for b in self.blocks)

    @property
    def blocked(self) -> bool:
        """True when publishing this sample would be refused by the leak scan."""
        return bool(self.leaks)

    def as_dict(self) -> dict:
        return {
            "mapping": self.mapping,
            "blocks": [b.__dict__ for b in self.blocks],
            "causes": [c.__dict__ for c in self.causes],
            "unmapped": [{"terminology": t, "value": v, "count": n} for t, v, n in self.unmapped],
            "uncovered": [{"element": e, "count": n} for e, n in self.uncovered],
            "would_quarantine": self.quarantined,
            "leak_scan": {"blocked": self.blocked, "hits": [str(h) for h in self.leaks], "exempted": self.exempted},
        }


def check_feed(
    mapping_path: Path, url: str, institution: str, ruleset_path: Path, zone: str = "recognition",
    keys: Keyring | None = None, limit: int = 1000, rows_per_cause: int = 5, canaries: frozenset[str] = frozenset(),
) -> FeedCheck:
    """Check one feed on a sample of at most limit rows per block. Without keys, a throwaway key is used.

    canaries: the workspace's canary values, scanned for like every identifier.
    """
    mapping = load_mapping(mapping_path)
    ruleset = load_ruleset(ruleset_path, zone)
    scanner = Scanner(canaries, load_scan_policy(ruleset_path))
    preparer = Preparer(institution, keys or Keyring(os.urandom(32)), ruleset, scanner, oracle_every=1)
    engine = sa.create_engine(url)
    schema = SourceSchema(engine)
    blocks, groups = [], {}
    unmapped: Counter[tuple[str, str]] = Counter()
    scanned = ScanResult()
    try:
        for index, block in enumerate(mapping.blocks):
            compiled = preparer.compiled(str(mapping.path), index)
            check = BlockCheck(block.resource, block.table)
            blocks.append(check)
            select, check.sample = spread_sample(engine, block_select(compiled, schema), limit)
            for rows in iter_batches(engine, select, min(limit, 5000)):
                batch = preparer.prepare(str(mapping.path), index, rows)
                scanned.add(_tally(batch, compiled, check, groups, scanner, rows_per_cause))
            unmapped.update(compiled.unmapped)
    finally:
        engine.dispose()
    return FeedCheck(
        mapping=mapping.label,
        blocks=blocks,
        causes=sorted(groups.values(), key=lambda g: -g.count),
        unmapped=[(t, v, n) for (t, v), n in unmapped.most_common()],
        uncovered=preparer.deid.stats.uncovered.most_common(),
        leaks=scanned.hits,
        exempted=scanned.exemptions(),
    )


def spread_sample(engine: sa.Engine, select: sa.Select, limit: int) -> tuple[sa.Select, str]:
    """At most limit rows of select, spread evenly over it (every k-th row in its order), and how they were drawn."""
    with engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(select.order_by(None).subquery())).scalar_one()
    if total <= limit:
        return select, f"all {total:,} rows"
    step = -(-total // limit)
    order = list(select._order_by_clauses)
    numbered = select.order_by(None).add_columns(sa.func.row_number().over(order_by=order).label("hub_sample_row")).subquery()
    picked = sa.select(*(numbered.c[c.key] for c in select.selected_columns)).where(
        (numbered.c.hub_sample_row - 1) % step == 0).order_by(numbered.c.hub_sample_row)
    return picked, f"every {_ordinal(step)} of {total:,} rows in key order"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"



def _tally(batch, compiled, check, groups: dict, scanner: Scanner, rows_per_cause: int) -> ScanResult:
    """Count one prepared batch into a block's check and the cause groups; return the leak scan
    of what would be published (resource texts and codes, labelled by source row)."""
    block = compiled.block
    ready = [(row, item) for row, item in zip(batch.rows, batch.items, strict=True) if not isinstance(item, Rejected)]
    result = scanner.columns({"resource": [i.text for _, i in ready], "code": [i.code for _, i in ready]},
                             f"{block.table}→{block.resource}", ids=[compiled.row_label(r) for r, _ in ready])
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
    return result

def check_ndjson_feed(
    feed, institution: str, ruleset_path: Path, zone: str = "recognition", keys: Keyring | None = None,
    limit: int = 1000, rows_per_cause: int = 5, canaries: frozenset[str] = frozenset(),
) -> FeedCheck:
    """Check an NDJSON feed (hub.region.Feed of kind ndjson) on at most limit lines per file, spread
    over each file: parse, validate, key ids, de-identify and leak-scan exactly as a run does;
    nothing is published or stored and no position moves. References to patients are not
    checked (a sample rarely holds both ends)."""
    import datetime as dt

    from deid.engine import Deidentifier
    from hub.resources import ResourcePreparer
    from hub.sources import ndjson

    ruleset = load_ruleset(ruleset_path, zone)
    scanner = Scanner(canaries, load_scan_policy(ruleset_path))
    deid = Deidentifier(ruleset, keys or Keyring(os.urandom(32)))
    prep = ResourcePreparer(institution, deid.keys, deid, scanner, feed.name, ndjson.feed_timezone(feed) if feed.timezone else dt.UTC,
                            oracle_every=1)  # a check: every sampled line also by fhir.resources
    prep.line_limit = ndjson.MAX_LINE_BYTES
    blocks, groups = [], {}
    scanned = ScanResult()
    for sf in ndjson.discover(feed.path):
        total = _count_lines(sf.path)
        step = max(1, -(-total // limit))
        check = BlockCheck(sf.resource_type or "(mixed)", sf.rel,
                           sample=f"all {total:,} lines" if step == 1 else f"every {_ordinal(step)} of {total:,} lines")
        blocks.append(check)
        for batch in ndjson.LineReader(sf.path, None).batches(2000):
            picked = [(n, t) for n, t in batch if (n - 1) % step == 0]
            done = prep.prepare(sf.rel, picked, sf.resource_type)
            ready = [p for p in done if not isinstance(p.item, Rejected)]
            scanned.add(scanner.columns({"resource": [p.item.text for p in ready], "code": [p.item.code for p in ready]},
                                        f"{sf.rel}→{check.resource}", ids=[f"line {p.line}" for p in ready]))
            for p in done:
                check.rows += 1
                if not isinstance(p.item, Rejected):
                    check.would_publish += 1
                    continue
                check.would_quarantine += 1
                for prob in p.item.problems:
                    cause = f"{prob.element}: {prob.problem}"
                    group = groups.setdefault(cause, CauseGroup(cause, example=prob.reason(p.item.label)))
                    group.count += 1
                    if len(group.rows) < rows_per_cause:
                        group.rows.append(f"{sf.rel}:{p.line}")
    return FeedCheck(
        mapping=f"ndjson:{feed.name} ({feed.path.name})", blocks=blocks,
        causes=sorted(groups.values(), key=lambda g: -g.count), unmapped=[],
        uncovered=deid.stats.uncovered.most_common(), leaks=scanned.hits, exempted=scanned.exemptions(),
    )


def _count_lines(path: Path) -> int:
    """Lines of a (possibly gzip) file, counted in chunks without holding it."""
    from hub.sources.ndjson import _open

    n, last = 0, b"\n"
    with _open(path) as fh:
        while chunk := fh.read(1 << 20):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


def check_hl7v2_feed(
    feed, institution: str, ruleset_path: Path, zone: str = "recognition", keys: Keyring | None = None,
    limit: int = 1000, rows_per_cause: int = 5, canaries: frozenset[str] = frozenset(),
) -> FeedCheck:
    """Check an HL7 v2 feed (hub.region.Feed of kind hl7v2) on at most limit messages, spread over
    its files (every k-th message in file order): decode, parse and run every mapping block of the
    feed exactly as a run does. Unreadable and unsupported messages are counted and grouped by
    cause under MessageHeader; nothing is published or stored and no position moves."""
    from hub.sources import hl7v2

    ruleset = load_ruleset(ruleset_path, zone)
    scanner = Scanner(canaries, load_scan_policy(ruleset_path))
    preparer = Preparer(institution, keys or Keyring(os.urandom(32)), ruleset, scanner, oracle_every=1)
    from hub.sources.sealed import unseal

    opener = (lambda p: unseal(keys, institution, feed.name, p)) if keys is not None else None  # the listener's messages
    found = [(sf.rel, raw) for sf, raws in hl7v2.iter_files(feed, opener) for raw in raws]
    step = max(1, -(-len(found) // limit))
    sample = f"all {len(found):,} messages" if step == 1 else f"every {_ordinal(step)} of {len(found):,} messages"
    messages, groups = [], {}
    held = BlockCheck(hl7v2.MESSAGE, "(messages)", sample=sample)

    def hold(label: str, cause: str, example: str) -> None:
        held.rows += 1
        held.would_quarantine += 1
        group = groups.setdefault(cause, CauseGroup(cause, example=example))
        group.count += 1
        if len(group.rows) < rows_per_cause:
            group.rows.append(label)

    for rel, raw in found[::step]:
        try:
            messages.append((f"{rel} message {raw.number}", hl7v2.parse_message(raw.data, feed.encoding)))
        except hl7v2.MessageProblem as p:
            hold(f"{rel} message {raw.number}", f"{hl7v2.MESSAGE} (message): {p.problem}", f"{rel} message {raw.number}: {p.problem}; expected {p.expected}")
    blocks, unmapped, scanned, read = [held], Counter(), ScanResult(), Counter()
    for mapping, index in hl7v2.feed_blocks(feed):
        block = mapping.blocks[index]
        compiled = preparer.compiled(str(mapping.path), index)
        reader = hl7v2.Rows(compiled.columns, block.table, block.where, mapping.path.name, block.line)
        check = BlockCheck(block.resource, f"{mapping.path.stem}:{block.table}", sample=sample)
        rows = []
        for label, msg in messages:
            got = reader.rows(msg)
            read[label] += len(got)
            rows.extend(got)
        if not rows:
            continue
        blocks.append(check)
        batch = preparer.prepare(str(mapping.path), index, rows)
        scanned.add(_tally(batch, compiled, check, groups, scanner, rows_per_cause))
        unmapped.update(compiled.unmapped)
    for label, msg in messages:
        if not read[label]:
            hold(label, f"{hl7v2.MESSAGE} (message): is a message type no block of the feed's mappings reads",
                 f"{label}: is a {msg.message_type} message, which no block of the feed's mappings reads")
    return FeedCheck(
        mapping=f"hl7v2:{feed.name} ({', '.join(m.name for m in feed.mappings)})", blocks=blocks,
        causes=sorted(groups.values(), key=lambda g: -g.count), unmapped=[(t, v, n) for (t, v), n in unmapped.most_common()],
        uncovered=preparer.deid.stats.uncovered.most_common(), leaks=scanned.hits, exempted=scanned.exemptions(),
    )
