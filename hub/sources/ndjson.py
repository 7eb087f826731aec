"""FHIR NDJSON source: a folder of bulk-export files, or a bulk-export manifest, read incrementally.

A feed of ``kind: ndjson`` in region.yaml names a folder (every ``*.ndjson``, ``*.jsonl``,
gzip or plain) or a bulk-data ``$export`` manifest whose ``output[].url`` point to local
files. Files are read line by line in batches (never a whole file in memory); each line is
one resource, prepared by hub.resources.ResourcePreparer and published through the run's
InstitutionRun (the same table writers, quarantine and leak-scanned sink as mapped feeds),
so rows read = published + quarantined holds per file.

Position: per file, the line and byte offset read up to, with the file's size, mtime and a
hash of its first bytes, kept in ``hub_ndjson_positions``. A run reads from the stored
position; a file that shrank or whose first bytes changed was rewritten and is read again
from the start. Positions advance only after the run commits (``advance``), so a crash in
between re-reads those lines, and the upsert by keyed id makes that harmless.

Lineage: each published row names its file (source_table, relative to the feed folder) and
the keyed hash of its (type, id); ``hub_ndjson_lines`` records file, line number and a keyed
hash of the line for each resource a run published (``line_of``).
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow as pa
import sqlalchemy as sa
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.expressions import EqualTo

import hub
from hub import quarantine
from hub.errors import CommandFailed
from hub.fhir.validate import RESOURCE_MODULES
from hub.lakehouse.tables import table_name
from hub.lineage.schema import lines, metadata, positions
from hub.mapping.compile import RowProblem
from hub.prepare import Ready, Rejected, identity_conflict
from hub.region import Feed
from hub.resources import ResourcePreparer
from hub.runreport import BlockCount

#: The largest line read as a resource. FHIR sets no resource size; its strings stop at 1 MiB
#: (hub.sources.screen.MAX_STRING), and a resource of a few of them is already unusual.
MAX_LINE_BYTES = 4 * 1024 * 1024
#: Bytes at the head of a file whose hash tells an appended file from a rewritten one.
PREFIX_BYTES = 64 * 1024
#: Files of these types are read first, so references to them are known when their users come.
TYPE_ORDER = ("Organization", "Patient", "Encounter", "Specimen", "ServiceRequest", "Observation", "DiagnosticReport")
_SUFFIXES = (".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")
_TYPE_RE = re.compile(r"[A-Z][A-Za-z]+")




class NdjsonSourceError(CommandFailed):
    """A feed's folder or manifest cannot be read (named by path and, for a manifest, output index)."""


@dataclass(frozen=True)
class SourceFile:
    path: Path
    rel: str  # relative to the feed folder (the manifest's folder for a manifest)
    resource_type: str | None  # from the manifest's type or the file name; lines say their own


@dataclass(frozen=True)
class Position:
    line: int
    offset: int
    size: int
    mtime: float
    prefix: str


@dataclass(frozen=True)
class Advance:
    """A file's position after this run, recorded by advance() once the run has committed."""

    feed: str
    file: str
    position: Position


# ---- files -------------------------------------------------------------------------------

def discover(path: Path) -> list[SourceFile]:
    """The feed's files, patients and visits first: a folder's NDJSON files or a manifest's outputs."""
    if path.is_dir():
        found = [SourceFile(p, p.relative_to(path).as_posix(), _type_from_name(p.name))
                 for p in sorted(path.iterdir()) if p.is_file() and p.name.endswith(_SUFFIXES)]
    elif path.is_file():
        found = _manifest_files(path)
    else:
        raise NdjsonSourceError(f"{path}: no such folder or manifest file (the feed's path in region.yaml)")
    return sorted(found, key=lambda f: (TYPE_ORDER.index(f.resource_type) if f.resource_type in TYPE_ORDER else len(TYPE_ORDER), f.rel))


def _type_from_name(name: str) -> str | None:
    """``Observation.ndjson``, ``Observation-2.ndjson.gz``, ``1.Observation.ndjson`` -> Observation."""
    for part in re.split(r"[.\-_]", name):
        if _TYPE_RE.fullmatch(part) and part in RESOURCE_MODULES:
            return part
    for part in re.split(r"[.\-_]", name):
        if _TYPE_RE.fullmatch(part) and part not in ("ndjson", "jsonl", "gz"):
            return part
    return None


def _manifest_files(manifest: Path) -> list[SourceFile]:
    try:
        doc = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise NdjsonSourceError(f"{manifest}: not a readable bulk-export manifest ({type(exc).__name__})") from None
    outputs = doc.get("output") if isinstance(doc, dict) else None
    if not isinstance(outputs, list):
        raise NdjsonSourceError(f"{manifest}: no output list; expected a bulk-data manifest with output[].type and output[].url")
    base, out = manifest.parent.resolve(), []
    for i, entry in enumerate(outputs):
        url = entry.get("url") if isinstance(entry, dict) else None
        if not isinstance(url, str) or not url:
            raise NdjsonSourceError(f"{manifest}: output[{i}].url is missing")
        parsed = urlparse(url)
        if parsed.scheme in ("http", "https"):
            raise NdjsonSourceError(f"{manifest}: output[{i}].url is a remote URL; download the export first and point "
                                    "url at the local files (file:///... or a path relative to the manifest)")
        file = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(url)
        file = file if file.is_absolute() else (base / file)
        if not file.is_file():
            raise NdjsonSourceError(f"{manifest}: output[{i}].url names a file that does not exist")
        try:
            rel = file.resolve().relative_to(base).as_posix()
        except ValueError:
            rel = file.name
        rtype = entry.get("type") if isinstance(entry.get("type"), str) else _type_from_name(file.name)
        out.append(SourceFile(file, rel, rtype))
    return out


def _prefix(path: Path, size: int) -> str:
    with path.open("rb") as fh:
        return hashlib.sha256(fh.read(min(size, PREFIX_BYTES))).hexdigest()


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb")


class LineReader:
    """Lines of one file from a position, in batches of (line number, text or None when too long).

    ``line`` and ``offset`` tell how far it has read. Blank lines are skipped (and numbered).
    """

    def __init__(self, path: Path, start: Position | None):
        self.path = path
        self.line = start.line if start else 0
        self.offset = start.offset if start else 0

    def batches(self, size: int) -> Iterator[list[tuple[int, str | None]]]:
        with _open(self.path) as fh:
            if self.offset:
                fh.seek(self.offset)  # gzip: decompresses forward to it
            batch: list[tuple[int, str | None]] = []
            while True:
                raw = fh.readline(MAX_LINE_BYTES + 1)
                if not raw:
                    break
                n = len(raw)
                text: str | None
                if n > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                    while raw and not raw.endswith(b"\n"):  # skip the rest without holding it
                        raw = fh.readline(1024 * 1024)
                        n += len(raw)
                    text = None
                else:
                    text = raw.decode("utf-8", errors="replace")
                self.line += 1
                self.offset += n
                if text is not None and not text.strip():
                    continue
                batch.append((self.line, text))
                if len(batch) >= size:
                    yield batch
                    batch = []
            if batch:
                yield batch


# ---- positions ---------------------------------------------------------------------------

def _ensure_tables(engine: sa.Engine) -> None:
    from hub.lineage.runrecord import create_all_concurrently

    create_all_concurrently(metadata, engine, tables=[positions, lines])


def get_position(engine: sa.Engine, institution: str, feed: str, file: str) -> Position | None:
    _ensure_tables(engine)
    with engine.connect() as conn:
        r = conn.execute(sa.select(positions).where(
            positions.c.institution == institution, positions.c.feed == feed, positions.c.file == file)).first()
    return None if r is None else Position(r.line, r.offset, r.size, r.mtime, r.prefix)


def plan_file(engine: sa.Engine, institution: str, feed: str, file: SourceFile, full: bool = False) -> tuple[Position | None, str]:
    """Where to start reading a file and why: (start position or None for the beginning, state).

    state: "new", "appended", "unchanged" (nothing to read), "rewritten" or "full".
    """
    stored = get_position(engine, institution, feed, file.rel)
    if stored is None:
        return None, "new"
    if full:
        return None, "full"
    st = file.path.stat()
    if st.st_size < stored.size or _prefix(file.path, stored.size) != stored.prefix:
        return None, "rewritten"
    if st.st_size == stored.size:
        return stored, "unchanged"
    return stored, "appended"


def advance(engine: sa.Engine, institution: str, moves: list[Advance], run_id: str) -> None:
    """Record the files' positions (call only after the run's commit: then nothing read is lost)."""
    if not moves:
        return
    _ensure_tables(engine)
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        for m in moves:
            where = (positions.c.institution == institution, positions.c.feed == m.feed, positions.c.file == m.file)
            values = {**m.position.__dict__, "run_id": run_id, "updated_at": now}
            if conn.execute(positions.update().where(*where).values(**values)).rowcount == 0:
                conn.execute(positions.insert().values(institution=institution, feed=m.feed, file=m.file, **values))


def line_of(engine: sa.Engine, institution: str, resource_id: str) -> dict | None:
    """The file and line the latest published version of a resource came from (lineage trace)."""
    _ensure_tables(engine)
    with engine.connect() as conn:
        r = conn.execute(sa.select(lines).where(lines.c.institution == institution, lines.c.resource_id == resource_id)
                         .order_by(lines.c.id.desc()).limit(1)).first()
    return None if r is None else {"feed": r.feed, "file": r.file, "line": r.line, "line_hash": r.line_hash, "run_id": r.run_id}


# ---- publishing --------------------------------------------------------------------------

def feed_timezone(feed: Feed) -> dt.timezone:
    sign = -1 if feed.timezone.startswith("-") else 1
    hours, minutes = feed.timezone[1:].split(":")
    return dt.timezone(sign * dt.timedelta(hours=int(hours), minutes=int(minutes)))


def publish_feed(run, feed: Feed, *, full: bool = False, batch_lines: int = 2000) -> list[Advance]:
    """Stage every new line of an NDJSON feed into run (an InstitutionRun); returns the positions
    to record with advance() after run.commit(). full: read every file from the start."""

    _ensure_tables(run.engine)
    local = run.pool.local
    prep = ResourcePreparer(run.inst.id, run.keys, local.deid, local.scanner, feed.name, feed_timezone(feed),
                            run.region.validation_oracle_every)
    prep.line_limit = MAX_LINE_BYTES
    config = f"ndjson|{run.ruleset.label}|{run.keys.key_id}|{hub.__version__}"
    label = f"ndjson:{feed.name}"
    info = run.report.sources.setdefault(feed.name, {"kind": "ndjson", "files": {}, "references_outside_export": 0})
    present: set[tuple[str, str]] = set()
    published_ids: dict[str, set[str]] = {}
    scanned_by_run = run.pool.scans_for(run.publication)  # the preparer's per-line scan is the publication's own
    mapping_version, ruleset_label = f"fhir-ndjson@{hub.__version__}", run.ruleset.label  # the same on every row
    moves = []
    for sf in discover(feed.path):
        start, state = plan_file(run.engine, run.inst.id, feed.name, sf, full)
        st = sf.path.stat()
        info["files"][sf.rel] = {"state": state, "from_line": (start.line if start else 0) + 1}
        if state == "unchanged":
            continue
        counts: dict[str, BlockCount] = {}
        base: dict[str, tuple[int, int]] = {}  # writer's (written, unchanged) before this file: flushes mid-file count too
        reopened: dict[str, bool] = {}
        reader = LineReader(sf.path, start)
        run.progress.start(f"{run.inst.id} {feed.name} {sf.rel}", 0)
        for batch in reader.batches(batch_lines):
            texts = dict(batch)
            stats = local.deid.stats
            before_unc, before_drop = stats.uncovered.copy(), stats.dropped_by_rule.copy()
            done = prep.prepare(sf.rel, batch, sf.resource_type)
            present.update((p.resource_type, p.item.id) for p in done if isinstance(p.item, Ready))
            rejected, lineage, resolved = [], [], {}
            now = dt.datetime.now(dt.UTC)
            for p in done:
                rtype, item = p.resource_type, p.item
                count = counts.get(rtype)
                if count is None:
                    count = counts[rtype] = BlockCount(feed.name, label, sf.rel, rtype)
                    run.report.counts.append(count)
                    w0 = run.writers.get(rtype)
                    base[rtype] = (w0.written, w0.unchanged) if w0 is not None else (0, 0)
                count.rows_read += 1
                if isinstance(item, Ready):
                    if rtype == "Patient":
                        conflict = identity_conflict(run.patients.get(item.id), item)
                        if conflict is not None:
                            item = _rejected(item, f"{sf.rel}:{p.line}", "Patient.identifier", p.line,
                                             "this resource id is already published for a patient with a different resident ID number or birth date",
                                             "one person per resource id: correct the export, then publish again")
                            pseudonym = None
                        else:
                            run.patients[item.id] = (item.pseudonym, item.effective_time)
                            pseudonym = item.pseudonym
                    else:
                        pseudonym = run.patients.get(item.patient_ref, (None,))[0] if item.patient_ref else None
                        if item.patient_ref and pseudonym is None:
                            item = _rejected(item, f"{sf.rel}:{p.line}", f"{rtype}.subject", p.line,
                                             "refers to a patient this feed has not published (not in the export, or quarantined)",
                                             "a Patient of the same export, published first")
                if isinstance(item, Rejected):
                    count.quarantined += 1
                    count.failed_validation += item.failed_validation
                    for prob in item.problems:
                        run.report.causes[f"{prob.element}: {prob.problem}"] += 1
                    text = texts.get(p.line)
                    rejected.append(quarantine.QuarantinedRow(
                        feed=feed.name, mapping=label, source_table=sf.rel, resource_type=rtype,
                        source_key_hash=item.source_key_hash,
                        cause=f"{item.problems[0].element}: {item.problems[0].problem}",
                        reason=" | ".join(prob.reason(item.label) for prob in item.problems),
                        row={"file": sf.rel, "line": p.line, "text": text} if text is not None
                        else {"file": sf.rel, "line": p.line, "text": None, "note": "over the size limit: not stored, read it from the file"},
                    ))
                    continue
                for ref in p.references:
                    if ref not in present and ref[1] not in _published(run, ref[0], published_ids):
                        info["references_outside_export"] += 1
                line_hash = run.keys.hmac_hex("source-key", f"{config}|{texts[p.line]}")
                run.writer(rtype).add({
                    "id": item.id, "institution": run.inst.id, "resource_type": rtype,
                    "patient": pseudonym, "code": item.code, "effective_time": item.effective_time,
                    "resource": item.data, "content_hash": item.hash,
                    "source_system": label, "source_table": sf.rel,
                    "source_key_hash": item.source_key_hash, "run_id": run.run_id, "mapping_version": mapping_version,
                    "ruleset_version": ruleset_label, "key_id": run.keys.key_id, "published_at": now,
                    "source_updated_at": None, "source_row_hash": line_hash,
                }, text_scanned=item.scanned and scanned_by_run)
                count.published += 1
                resolved.setdefault(rtype, []).append(item.source_key_hash)
                lineage.append({"run_id": run.run_id, "institution": run.inst.id, "feed": feed.name, "file": sf.rel,
                                "line": p.line, "resource_type": rtype, "resource_id": item.id, "line_hash": line_hash})
            quarantine.store(run.engine, run.keys, run.run_id, run.inst.id, rejected)
            for rtype, hashes in resolved.items():
                if rtype not in reopened:
                    reopened[rtype] = quarantine.has_open(run.engine, run.inst.id, sf.rel, rtype)
                if reopened[rtype]:
                    quarantine.resolve_published(run.engine, run.inst.id, sf.rel, rtype, hashes, run.run_id)
            if lineage:
                with run.engine.begin() as conn:
                    conn.execute(lines.insert(), lineage)
            run.publication.count_scanned(prep.take_exempted())
            run.report.uncovered.update(stats.uncovered - before_unc)
            run.report.dropped_by_rule.update(stats.dropped_by_rule - before_drop)
            run.progress.advance(len(batch))
            run.heartbeat()
            for rtype in counts:
                if rtype in run.writers and run.writers[rtype].pending >= run.flush_rows:
                    run.writers[rtype].flush()
        for rtype, count in counts.items():
            if rtype in run.writers:  # types hub does not publish have no table, only quarantined lines
                w = run.writers[rtype]
                before_w, before_u = base[rtype]
                w.flush()
                count.written, count.unchanged = w.written - before_w, w.unchanged - before_u
            if count.rows_read != count.published + count.quarantined:
                raise AssertionError(f"{sf.rel}: rows read {count.rows_read} != published {count.published} + quarantined {count.quarantined}")
        info["files"][sf.rel]["to_line"] = reader.line
        moves.append(Advance(feed.name, sf.rel, Position(reader.line, reader.offset, st.st_size, st.st_mtime, _prefix(sf.path, st.st_size))))
    return moves


def _rejected(item: Ready, location: str, element: str, line: int, problem: str, expected: str) -> Rejected:
    return Rejected([RowProblem(location, element, None, problem, expected, None)], False, f"line {line}", item.source_key_hash)


def _published(run, resource_type: str, cache: dict[str, set[str]]) -> set[str]:
    """Ids of resource_type the institution has published before this run (read once per run)."""
    if resource_type not in cache:
        try:
            table = run.icat.load_table(table_name(run.region.zone, resource_type))
            data: pa.Table = table.scan(row_filter=EqualTo("institution", run.inst.id), selected_fields=("id",)).to_arrow()
            cache[resource_type] = set(data.column("id").to_pylist())
        except (NoSuchTableError, ValueError):
            cache[resource_type] = set()
    return cache[resource_type]
