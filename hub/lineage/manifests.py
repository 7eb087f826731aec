"""Tamper-evident history: a hash chain of signed publication manifests, checked against the live tables.

Each publication (an institution run, a research release, any sink's output) appends one
manifest to ``hub_manifests``. For every Iceberg table it committed to, the manifest
records each snapshot the publication made (its id, its parent, and the data files that
snapshot added and removed, as seen by a reader) and every added file's SHA-256, size and
row count; plus plain files written outside Iceberg, and a summary. Each manifest carries
the hash of the previous one and an Ed25519 signature by the region's signing key
(``hub.lineage.signing``), which is not derived from the master key and whose private half
can live outside the workspace.

``verify`` checks the chain (hashes, links, signatures against the *trusted* public keys,
optionally the head against one the operator recorded) and then the live state of every
table in the Iceberg catalog against it:

- every snapshot in a table's history is recorded by a manifest (a commit made outside a
  publication, or a delete of rows, is a break), with the same parent;
- every snapshot the chain records is still in the table's current history (a rollback,
  an older metadata file put back, or a truncated history is a break);
- the live data files of the current snapshot are exactly those the chain says are live:
  the recorded snapshots' added minus removed files, folded along the parent links (an
  ``add_files`` injection or a file taken out by editing metadata is a break);
- every recorded file still has its recorded SHA-256;
- the Iceberg manifest list and manifests a recorded snapshot reads are byte for byte those
  recorded (row counts, partition values and column bounds that readers prune by);
- each table's metadata (``table_state``: schema, spec, sort order, properties, tags) is the
  last one recorded, and each recorded state follows from the one before (columns are only
  ever added; anything else is a break unless an ``adopt`` manifest accepted it).

Beyond the tables: every manifest records the access log's head, and verify re-walks the
log's hash chain against those heads (``hub.lineage.access``); a release's manifest records
its ``hub_releases`` row (``release_entry``), compared with the live row; another store's
build (the recognition index) records the digest of its whole content before and after it
wrote (``sql_state``), and the live store must be what the last build left.

Manifests may be appended in another order than their commits (runs of different
institutions commit to the same tables concurrently): the check follows parent links, not
the order of the chain, so that raises no alarm. A snapshot committed by a run that died
before its manifest is a break until an operator reviews it and adopts it with a signed
manifest (``adopt``, ``hub audit adopt``); a check that runs while others publish may ask for
snapshots labelled with a run still marked running to be reported as in flight instead.
Snapshots a publication rolled back itself are recorded as withdrawn. Snapshots a maintenance
publication expired (``hub.lakehouse.maintenance``) are listed under ``expired`` in its
manifest: their absence from the history, the null parent expiry leaves on the oldest kept
snapshot, and the data files only they read going missing are notes, not breaks; the live
files are still folded from the chain's first snapshot along the recorded parent links. Data files no
snapshot references (a run that died before it committed) are reported as orphans: nobody
reads them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import sqlalchemy as sa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot

from hub.lineage import access
from hub.lineage.schema import manifests
from hub.lineage.signing import Signer, TrustedKeys, key_id_of

GENESIS = "0" * 64
FORMAT = 3
#: Format 2 manifests (before table metadata, Iceberg manifest hashes and the access-log head were recorded) still verify.
READABLE_FORMATS = (2, 3)
#: A run marked running for longer than this no longer makes its snapshots "in flight".
IN_FLIGHT_FOR = dt.timedelta(hours=24)
_APPEND_TRIES = 20
#: verify accounts for snapshots a maintenance manifest records as expired.
RECORDS_EXPIRY = True


def _canonical(body: dict) -> str:
    return json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def local_path(uri: str) -> Path:
    parsed = urlparse(uri)
    return Path(parsed.path) if parsed.scheme in ("file", "") else Path(uri)


class _Files:
    """Reads a table's manifest files once each: the live files of any snapshot, as a reader sees them."""

    def __init__(self, table: Table):
        self.table = table
        self._entries: dict[str, list[tuple[str, bool, str, int, int]]] = {}

    def _manifest(self, mf) -> list[tuple[str, bool, str, int, int]]:
        """(path, live, content, bytes, rows) of every entry of one manifest file."""
        got = self._entries.get(mf.manifest_path)
        if got is None:
            got = self._entries[mf.manifest_path] = [
                (e.data_file.file_path, e.status.name != "DELETED", e.data_file.content.name.lower(),
                 e.data_file.file_size_in_bytes, e.data_file.record_count)
                for e in mf.fetch_manifest_entry(self.table.io, discard_deleted=False)
            ]
        return got

    def live(self, snapshot: Snapshot | None) -> dict[str, tuple[str, int, int]]:
        """path -> (content, bytes, rows) of the files a reader of snapshot reads (data and delete files)."""
        if snapshot is None:
            return {}
        return {p: (c, b, r) for mf in snapshot.manifests(self.table.io) for p, live, c, b, r in self._manifest(mf) if live}

    def referenced(self, snapshot: Snapshot) -> set[str]:
        """Every file path any manifest of snapshot mentions, live or deleted."""
        return {p for mf in snapshot.manifests(self.table.io) for p, *_ in self._manifest(mf)}


def _delta(files: _Files, snapshot: Snapshot) -> tuple[dict[str, tuple[str, int, int]], list[str]]:
    """(added files with details, removed paths) of snapshot against its parent, as a reader sees them."""
    now = files.live(snapshot)
    parent = files.table.snapshot_by_id(snapshot.parent_snapshot_id) if snapshot.parent_snapshot_id is not None else None
    before = files.live(parent)
    return {p: now[p] for p in sorted(now.keys() - before.keys())}, sorted(before.keys() - now.keys())


def _props(snapshot: Snapshot) -> dict[str, str]:
    return snapshot.summary.additional_properties if snapshot.summary else {}


def _operation(snapshot: Snapshot) -> str:
    return snapshot.summary.operation.value if snapshot.summary else ""


def _ancestry(table: Table) -> dict[int, Snapshot]:
    """The current snapshot and its ancestors, by id (oldest first)."""
    live = {s.snapshot_id: s for s in table.snapshots()}
    chain: dict[int, Snapshot] = {}
    node = table.current_snapshot()
    while node is not None and node.snapshot_id not in chain:  # a cycle only in hand-edited metadata
        chain[node.snapshot_id] = node
        node = live.get(node.parent_snapshot_id)
    return dict(reversed(chain.items()))


def _io_sha256(table: Table, path: str) -> str | None:
    """SHA-256 of a file through the table's FileIO (Iceberg manifest lists and manifests); None if it is gone."""
    try:
        with table.io.new_input(path).open() as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except (FileNotFoundError, OSError):
        return None


def _digest(doc) -> str:
    return hashlib.sha256(_canonical(doc).encode()).hexdigest()


def _field_signature(f) -> list:
    """What a reader of a column depends on: its name, type (nested fields included), requiredness, initial default."""
    initial = getattr(f, "initial_default", None)
    return [f.name, str(f.field_type), bool(f.required), None if initial is None else repr(initial)]


def table_state(table: Table) -> dict:
    """The parts of a table's metadata that decide what readers see, beyond its snapshots.

    The current schema field by field (renaming or retyping a column is a metadata-only
    commit), a digest of every schema in the metadata (time travel reads a snapshot with its
    own schema), the partition spec, sort order, properties (``schema.name-mapping.default``
    remaps columns), and the tags and branches other than main.
    """
    md = table.metadata
    schema = table.schema()
    return {
        "schema_id": schema.schema_id,
        "fields": {str(f.field_id): _field_signature(f) for f in schema.fields},
        "schemas": {str(s.schema_id): _digest(s.model_dump(mode="json")) for s in md.schemas},
        "spec": _digest(table.spec().model_dump(mode="json")),
        "sort_order": _digest(table.sort_order().model_dump(mode="json")),
        "properties": dict(sorted(table.properties.items())),
        "refs": {name: ref.snapshot_id for name, ref in sorted(md.refs.items()) if name != "main"},
    }


def _record_table(table: Table, snapshots: list[Snapshot]) -> dict:
    """A manifest's entry for one table: each snapshot's parent, delta and Iceberg manifest hashes, each
    added file's hash, and the table's metadata state (``table_state``) as the publication leaves it."""
    files = _Files(table)
    current = _ancestry(table)
    out_snaps, out_files = [], {}
    for s in sorted(snapshots, key=lambda s: (s.sequence_number or 0, s.timestamp_ms)):
        added, removed = _delta(files, s)
        out_snaps.append({"id": s.snapshot_id, "parent": s.parent_snapshot_id, "operation": _operation(s),
                          "added": list(added), "removed": removed, "schema_id": s.schema_id,
                          "manifest_list": _io_sha256(table, s.manifest_list),
                          "manifests": {mf.manifest_path: _io_sha256(table, mf.manifest_path)
                                        for mf in s.manifests(table.io) if mf.added_snapshot_id == s.snapshot_id}})
        if s.snapshot_id not in current:  # the publication rolled it back itself (e.g. a release that failed its recount)
            out_snaps[-1]["withdrawn"] = True
        for path, (content, size, rows) in added.items():
            entry = {"path": path, "sha256": file_sha256(local_path(path)), "bytes": size, "rows": rows}
            if content != "data":
                entry["content"] = content
            out_files[path] = entry
    return {"snapshots": out_snaps, "files": [out_files[p] for p in sorted(out_files)], "state": table_state(table)}


def _recorded_by_run(engine: sa.Engine, run_id: str) -> dict[str, set[int]]:
    """Snapshot ids per table already recorded by earlier manifests of run_id (a second append records only new ones)."""
    out: dict[str, set[int]] = {}
    with engine.connect() as conn:
        for (body,) in conn.execute(sa.select(manifests.c.body).where(manifests.c.run_id == run_id)):
            for name, entry in json.loads(body).get("tables", {}).items():
                out.setdefault(name, set()).update(s["id"] for s in entry.get("snapshots", []))
    return out


def _file_entries(files: Iterable[dict] | None) -> list[dict]:
    out = []
    for f in files or ():
        missing = {"path", "sha256", "bytes"} - f.keys()
        if missing:
            raise ValueError(f"file entry for the manifest lacks {', '.join(sorted(missing))}: {f.get('path', '?')}")
        out.append({k: f[k] for k in ("path", "sha256", "bytes", "rows") if k in f})
    return sorted(out, key=lambda f: f["path"])


def append(engine: sa.Engine, signer: Signer, run_id: str, tables: dict[str, Table], summary: dict,
           files: Iterable[dict] | None = None, *, snapshots: dict[str, Iterable[int]] | None = None) -> tuple[int, str]:
    """Append a signed manifest for what run_id committed to tables ({name: pyiceberg Table}); returns (seq, hash).

    The run's snapshots are found by their ``hub.run-id`` property, or given exactly by
    snapshots ({name: ids}, what the run's own commits created: prefer it, so a snapshot
    someone else labelled with the run id is never recorded). files: plain files written
    outside Iceberg, as {path, sha256, bytes, rows} (verify re-hashes them).
    """
    done = _recorded_by_run(engine, run_id)
    content = {}
    for name, table in sorted(tables.items()):
        if snapshots is not None:
            wanted = set(snapshots.get(name, ()))
            snaps = [s for s in table.snapshots() if s.snapshot_id in wanted]
            if len(snaps) != len(wanted):
                raise ValueError(f"{name}: snapshot(s) {sorted(wanted - {s.snapshot_id for s in snaps})} are not in the table")
        else:
            snaps = [s for s in table.snapshots() if _props(s).get("hub.run-id") == run_id]
        snaps = [s for s in snaps if s.snapshot_id not in done.get(name, set())]
        if snaps:
            content[name] = _record_table(table, snaps)
    return _append(engine, signer, run_id, {"tables": content, "files": _file_entries(files), "summary": summary})


def adopt(engine: sa.Engine, signer: Signer, table: Table, snapshot_ids: list[int], reason: str) -> tuple[int, str]:
    """Record snapshots no manifest accounts for (a run died between its commit and its manifest), after review.

    The manifest says they were adopted and why; verify lists adopted snapshots in its notes.
    It also records the table's metadata as it is now (``table_state``): with no snapshot ids,
    that is all it does, accepting a reviewed metadata change (a property an operator set).
    """
    name = ".".join(table.name())
    with engine.connect() as conn:
        bodies = [json.loads(b) for (b,) in conn.execute(sa.select(manifests.c.body))]
    done = {s["id"] for b in bodies for s in b.get("tables", {}).get(name, {}).get("snapshots", [])}
    if done & set(snapshot_ids):
        raise ValueError(f"{name}: snapshot(s) {sorted(done & set(snapshot_ids))} are already recorded by a manifest")
    snaps = [s for s in table.snapshots() if s.snapshot_id in set(snapshot_ids)]
    if len(snaps) != len(set(snapshot_ids)):
        raise ValueError(f"{name}: snapshot(s) {sorted(set(snapshot_ids) - {s.snapshot_id for s in snaps})} are not in the table")
    adopt_id = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-adopt"
    return _append(engine, signer, adopt_id, {"tables": {name: _record_table(table, snaps)}, "files": [],
                                              "summary": {"adopted": reason}, "adopted": True})


def _append(engine: sa.Engine, signer: Signer, run_id: str, content: dict) -> tuple[int, str]:
    access.ensure_chain(engine)
    for attempt in range(_APPEND_TRIES):
        try:
            with engine.begin() as conn:
                last = conn.execute(sa.select(manifests.c.seq, manifests.c.hash).order_by(manifests.c.seq.desc()).limit(1)).first()
                seq, prev = (last.seq + 1, last.hash) if last else (1, GENESIS)
                now = dt.datetime.now(dt.UTC)
                body = {"format": FORMAT, "seq": seq, "prev_hash": prev, "created_at": now.isoformat(), "run_id": run_id,
                        "signer": signer.key_id, "access_log_head": access.head(conn), **content}
                digest = hashlib.sha256(_canonical(body).encode()).hexdigest()
                conn.execute(manifests.insert().values(
                    seq=seq, created_at=now, run_id=run_id, key_id=signer.key_id, body=_canonical(body), hash=digest,
                    signature=signer.sign(digest), public_key=signer.public_hex,
                ))
            return seq, digest
        except sa.exc.IntegrityError:  # another publication took this seq: link to it instead
            if attempt == _APPEND_TRIES - 1:
                raise
    raise AssertionError("unreachable")


def _cell(value) -> bytes:
    if value is None:
        return b"-"
    if isinstance(value, dt.datetime):  # SQLite gives naive UTC back, PostgreSQL aware: one form for both
        value = (value.astimezone(dt.UTC) if value.tzinfo else value).replace(tzinfo=None).isoformat(timespec="microseconds")
    raw = value if isinstance(value, bytes) else str(value).encode()
    return b"%d:%s" % (len(raw), raw)


def sql_state(conn: sa.Connection, tables: Iterable[sa.Table]) -> dict:
    """{table: {columns, rows, sha256}}: each table's whole content in one pass in primary-key order,
    every cell length-prefixed (a canonical serialisation: the same rows give the same digest on any backend)."""
    out = {}
    for t in tables:
        h, rows = hashlib.sha256(), 0
        result = conn.execute(sa.select(*t.columns).order_by(*t.primary_key.columns).execution_options(yield_per=10_000))
        for part in result.partitions():
            for row in part:
                h.update(b"|".join(_cell(v) for v in row))
                h.update(b"\n")
            rows += len(part)
        out[t.name] = {"columns": [c.name for c in t.columns], "rows": rows, "sha256": h.hexdigest()}
    return out


def release_entry(release_id: str, name: str, k: int, status: str, ruleset: str, key_id: str,
                  risk_report: dict | str, snapshots: dict | str | None) -> dict:
    """What a release's manifest records of its hub_releases row (and what verify recomputes from the live row)."""
    def doc(value):
        return json.loads(value) if isinstance(value, str) else json.loads(json.dumps(value, default=str))

    return {"release_id": release_id, "name": name, "k": k, "status": status, "ruleset": ruleset, "key_id": key_id,
            "risk_report_sha256": _digest(doc(risk_report)), "snapshots": doc(snapshots or {})}


def head(engine: sa.Engine) -> tuple[int, str] | None:
    """(seq, hash) of the newest manifest: record it somewhere the workspace's writers cannot reach."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(manifests.c.seq, manifests.c.hash).order_by(manifests.c.seq.desc()).limit(1)).first()
    return (row.seq, row.hash) if row else None


def parse_head(text: str) -> tuple[int, str]:
    """'SEQ:HASH' as printed by verify (and in run reports) -> (seq, hash)."""
    seq, sep, digest = text.strip().partition(":")
    if not sep or not seq.isdigit() or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
        raise ValueError(f"--expect-head {text!r}: expected SEQ:HASH, e.g. 42:{'0' * 64}")
    return int(seq), digest.lower()


@dataclass
class VerifyReport:
    manifests: int = 0
    tables: int = 0
    snapshots: int = 0  # snapshots checked against the chain
    files: int = 0  # files re-hashed
    head: tuple[int, str] | None = None
    breaks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # not breaks, but the operator should know
    orphans: list[str] = field(default_factory=list)
    access_log: dict = field(default_factory=dict)  # entries, anchored, unanchored
    stores: list[str] = field(default_factory=list)  # other stores whose content was compared (recognition-index)
    releases: int = 0  # hub_releases rows compared with their manifests

    @property
    def ok(self) -> bool:
        return not self.breaks

    def as_dict(self) -> dict:
        return {"ok": self.ok, "manifests": self.manifests, "tables": self.tables, "snapshots": self.snapshots,
                "files_rehashed": self.files, "head": f"{self.head[0]}:{self.head[1]}" if self.head else None,
                "access_log": self.access_log, "stores": self.stores, "releases": self.releases,
                "breaks": self.breaks, "notes": self.notes, "orphans": self.orphans}


@dataclass
class _Recorded:
    seq: int
    run_id: str
    snapshot: dict
    adopted: bool


def _check_chain(rows, trusted: TrustedKeys, report: VerifyReport) -> list[tuple[object, dict]]:
    """Hashes, links, sequence numbers and signatures; returns (row, body) of every readable manifest."""
    out = []
    prev = GENESIS
    for row in rows:
        report.manifests += 1
        where = f"manifest {row.seq} (run {row.run_id})"
        if hashlib.sha256(row.body.encode()).hexdigest() != row.hash:
            report.breaks.append(f"{where}: content does not match its hash (edited after signing)")
        try:
            body = json.loads(row.body)
        except ValueError:
            report.breaks.append(f"{where}: content is not JSON (edited)")
            prev = row.hash
            continue
        if body.get("prev_hash") != prev:
            report.breaks.append(f"{where}: does not link to manifest {row.seq - 1} (chain broken)")
        if body.get("seq") != row.seq:
            report.breaks.append(f"{where}: sequence number altered")
        prev = row.hash
        if not any(k.verifies(row.signature, row.hash) for k in trusted.for_seq(row.seq)):
            other = [k for k in trusted.keys if k.verifies(row.signature, row.hash)]
            claimed = key_id_of(row.public_key) if len(row.public_key) == 64 else "?"
            if other:
                report.breaks.append(f"{where}: signed by key {other[0].key_id}, which is trusted only for manifests "
                                     f"{other[0].from_seq}..{other[0].until_seq or ''} ({other[0].where})")
            else:
                report.breaks.append(f"{where}: signature does not verify under any trusted key (it claims key {claimed}; "
                                     f"trusted keys from {trusted.source})")
        if body.get("format") not in READABLE_FORMATS:
            report.breaks.append(f"{where}: written in an older format that records no table state; it cannot vouch for the tables")
            continue
        out.append((row, body))
    return out


def _in_flight_runs(engine: sa.Engine) -> dict[str, str]:
    """run id -> institution of runs still running (started within IN_FLIGHT_FOR)."""
    from hub.lineage.runrecord import runs

    since = dt.datetime.now(dt.UTC) - IN_FLIGHT_FOR
    with engine.connect() as conn:
        rows = conn.execute(sa.select(runs.c.run_id, runs.c.institution, runs.c.started_at).where(runs.c.status == "running"))
        return {r.run_id: r.institution for r in rows
                if (r.started_at if r.started_at.tzinfo else r.started_at.replace(tzinfo=dt.UTC)) >= since}


def _run_status(engine: sa.Engine, run_id: str | None) -> str | None:
    from hub.lineage.runrecord import runs

    if not run_id:
        return None
    with engine.connect() as conn:
        return conn.execute(sa.select(runs.c.status).where(runs.c.run_id == run_id)).scalar_one_or_none()


def _all_tables(icat: Catalog) -> list[str]:
    names = []
    for ns in icat.list_namespaces():
        names.extend(".".join(t) for t in icat.list_tables(ns))
    return sorted(names)


def verify(engine: sa.Engine, trusted: TrustedKeys, icat: Catalog, *, warehouse: Path | None = None,
           last: int | None = None, expect_head: tuple[int, str] | None = None, in_flight_ok: bool = False,
           stores: dict[str, Callable[[], dict | None]] | None = None) -> VerifyReport:
    """Check the chain against the trusted keys, and every table's live state against the chain.

    Besides the Iceberg tables: each table's metadata (``table_state``) against the last one
    recorded, the access log's chain against the heads manifests recorded, each release's
    hub_releases row against its manifest, and each other store's whole content against the
    state its last build recorded (stores: {name: a function giving its live ``sql_state``,
    None if the store is gone}).

    last: re-hash the files (and compare the historical snapshots' contents) of only the
    last N manifests; the chain, every snapshot's accounting and the current snapshot's
    live files are always checked in full. expect_head: (seq, hash) the operator recorded
    earlier; the chain must still hold it. warehouse: where to look for orphan data files.
    in_flight_ok: a snapshot labelled with a run still marked running (started within
    IN_FLIGHT_FOR) is a note, not a break; for checks that run while other institutions
    publish. Off by default: a run killed after its commit is also still "running".
    """
    report = VerifyReport()
    with engine.connect() as conn:
        rows = list(conn.execute(sa.select(manifests).order_by(manifests.c.seq)))
    bodies = _check_chain(rows, trusted, report)
    report.head = (rows[-1].seq, rows[-1].hash) if rows else None
    if trusted.in_workspace:
        report.notes.append(f"trusted keys were read from {trusted.source}, inside the workspace: whoever can write the "
                            "workspace could have replaced them; verify with --trusted-keys pointing to a copy kept elsewhere")
    if expect_head is not None:
        seq, digest = expect_head
        at = next((r for r in rows if r.seq == seq), None)
        if at is None:
            report.breaks.append(f"manifest {seq}, the head you recorded, is gone: the chain ends at "
                                 f"{report.head[0] if report.head else 'nothing'} (truncated)")
        elif at.hash != digest:
            report.breaks.append(f"manifest {seq} has hash {at.hash}, not the {digest} you recorded (history rewritten)")
    check_from = rows[-last].seq if last and len(rows) >= last else 0

    recorded: dict[str, dict[int, _Recorded]] = {}
    recorded_files: dict[str, dict[str, tuple[int, str, dict]]] = {}
    plain_files: list[tuple[int, str, dict]] = []
    states: dict[str, list[tuple[int, bool, dict]]] = {}
    expired: dict[str, dict[int, int]] = {}  # table -> expired snapshot id -> seq of the manifest that expired it
    for row, body in bodies:
        where = f"manifest {row.seq} (run {row.run_id})"
        for name, ids in body.get("summary", {}).get("expired", {}).items():
            expired.setdefault(name, {}).update(dict.fromkeys(ids, row.seq))
        for name, entry in body.get("tables", {}).items():
            if "state" in entry:
                states.setdefault(name, []).append((row.seq, bool(body.get("adopted")), entry["state"]))
            mine = recorded.setdefault(name, {})
            for snap in entry.get("snapshots", []):
                seen = mine.get(snap["id"])
                if seen is None:
                    mine[snap["id"]] = _Recorded(row.seq, row.run_id, snap, bool(body.get("adopted")))
                elif seen.snapshot != snap:
                    report.breaks.append(f"{where}: {name} snapshot {snap['id']} recorded differently by manifest {seen.seq}")
            for f in entry.get("files", []):
                recorded_files.setdefault(name, {}).setdefault(f["path"], (row.seq, row.run_id, f))
        plain_files.extend((row.seq, row.run_id, f) for f in body.get("files", []))

    in_flight = _in_flight_runs(engine) if in_flight_ok else {}
    referenced: set[str] = set()
    readable: set[str] = set()  # files some remaining snapshot reads (referenced also holds deleted entries)
    names = sorted(set(_all_tables(icat)) | set(recorded))
    for name in names:
        _check_table(engine, icat, name, recorded.get(name, {}), recorded_files.get(name, {}), check_from,
                     in_flight, referenced, report, states.get(name, []), expired.get(name, {}), readable)
    _check_access_log(engine, bodies, report)
    _check_releases(engine, bodies, report)
    _check_stores(bodies, stores or {}, report)

    hashed: set[str] = set()
    live_paths = {str(local_path(p).resolve()) for p in readable}
    for name, by_path in recorded_files.items():
        gone = [p for p in by_path if expired.get(name) and str(local_path(p).resolve()) not in live_paths
                and not local_path(p).exists()]
        if gone:
            report.notes.append(f"{name}: {len(gone)} recorded data file(s) read only by expired snapshots were removed "
                                "(orphans after expiry); not re-hashed")
        for path, (seq, run_id, f) in by_path.items():
            if path in gone:
                continue
            if seq >= check_from:
                _rehash(f"manifest {seq} (run {run_id}): {name} data file", path, f["sha256"], hashed, report)
    for seq, run_id, f in plain_files:
        if seq >= check_from:
            _rehash(f"manifest {seq} (run {run_id}): file", f["path"], f["sha256"], hashed, report)
    if warehouse is not None and warehouse.exists():
        known = referenced | {p for by_path in recorded_files.values() for p in by_path}
        known_paths = {str(local_path(p).resolve()) for p in known}
        report.orphans = sorted(str(p) for p in warehouse.resolve().rglob("*.parquet") if str(p) not in known_paths)
        if report.orphans:
            report.notes.append(f"{len(report.orphans)} data file(s) under the warehouse belong to no snapshot: written by a "
                                "publication that died before it committed; no reader sees them (not a break)")
    return report


def _state_changes(a: dict, b: dict) -> tuple[list[str], list[str]]:
    """(changes that alter what readers see, harmless ones) from table state a to b."""
    bad, fine = [], []
    fa, fb = a.get("fields", {}), b.get("fields", {})
    for fid, sig in sorted(fa.items(), key=lambda kv: int(kv[0])):
        now = fb.get(fid)
        if now is None:
            bad.append(f"column {sig[0]} (field {fid}) dropped")
        elif now[0] != sig[0]:
            bad.append(f"column {sig[0]} (field {fid}) renamed to {now[0]}")
        elif now != sig:
            bad.append(f"column {sig[0]} (field {fid}) changed from {sig[1:]} to {now[1:]}")
    for fid in sorted(fb.keys() - fa.keys(), key=int):
        if fb[fid][3] is not None:
            bad.append(f"column {fb[fid][0]} (field {fid}) added with an initial default (readers see it in old files)")
        else:
            fine.append(f"column {fb[fid][0]} (field {fid}) added")
    for sid, digest in a.get("schemas", {}).items():
        if sid not in b.get("schemas", {}):
            bad.append(f"schema {sid} removed from the metadata")
        elif b["schemas"][sid] != digest:
            bad.append(f"schema {sid} rewritten in the metadata")
    for part, label in (("spec", "partition spec"), ("sort_order", "sort order")):
        if a.get(part) != b.get(part):
            bad.append(f"{label} changed")
    pa_, pb = a.get("properties", {}), b.get("properties", {})
    changed = sorted(k for k in pa_.keys() | pb.keys() if pa_.get(k) != pb.get(k))
    if changed:
        bad.append(f"table properties changed: {', '.join(changed)}")
    for ref, sid in a.get("refs", {}).items():
        if ref not in b.get("refs", {}):
            bad.append(f"tag {ref} removed")
        elif b["refs"][ref] != sid:
            bad.append(f"tag {ref} moved from snapshot {sid} to {b['refs'][ref]}")
    return bad, fine


def _check_state(name: str, table: Table, states: list[tuple[int, bool, dict]], report: VerifyReport) -> None:
    """Each recorded metadata state follows from the one before (columns only ever added), and the live
    metadata is the last one recorded; a change an adopt manifest accepted is a note."""
    if not states:
        return
    chain = [*sorted(states, key=lambda x: x[0]), (None, False, table_state(table))]
    for (seq_a, _, a), (seq_b, adopted, b) in zip(chain, chain[1:], strict=False):
        bad, fine = _state_changes(a, b)
        if seq_b is None:
            where = f"{name}: live metadata differs from what manifest {seq_a} recorded"
            cause = "changed outside a publication (e.g. update_schema, set_properties, metadata edited)"
        else:
            where = f"{name}: metadata recorded by manifest {seq_b} differs from manifest {seq_a}"
            cause = "changed outside a publication before it"
        if bad and adopted:
            report.notes.append(f"{where}: {'; '.join(bad)}: accepted by adopt manifest {seq_b}")
        elif bad:
            report.breaks.append(f"{where}: {'; '.join(bad)} ({cause})")
        if fine and seq_b is None:
            report.notes.append(f"{where}: {'; '.join(fine)} outside a publication (older files read it as null)")


def _check_manifest_files(name: str, table: Table, snapshot: Snapshot, rec: _Recorded,
                          created: dict[str, tuple[int, str | None]], hashed: set[str], report: VerifyReport) -> None:
    """The snapshot's Avro manifest list and manifests are byte for byte what the chain recorded (they hold
    the file list, row counts, partition values and column bounds readers prune by)."""
    if "manifest_list" not in rec.snapshot or snapshot.manifest_list in hashed:
        return
    hashed.add(snapshot.manifest_list)
    sid = snapshot.snapshot_id
    if _io_sha256(table, snapshot.manifest_list) != rec.snapshot["manifest_list"]:
        report.breaks.append(f"{name}: snapshot {sid}'s manifest list {snapshot.manifest_list} is not the one manifest "
                             f"{rec.seq} recorded (Iceberg metadata edited or replaced)")
        return
    for mf in snapshot.manifests(table.io):
        if mf.manifest_path in hashed or mf.manifest_path not in created:
            continue  # made by a snapshot recorded before manifests were hashed (format 2)
        hashed.add(mf.manifest_path)
        seq, digest = created[mf.manifest_path]
        if _io_sha256(table, mf.manifest_path) != digest:
            report.breaks.append(f"{name}: Iceberg manifest {mf.manifest_path} (read by snapshot {sid}) is not the one "
                                 f"manifest {seq} recorded (file list, row counts or column bounds edited)")


def _check_access_log(engine: sa.Engine, bodies: list[tuple[object, dict]], report: VerifyReport) -> None:
    heads = [(row.seq, body["access_log_head"]) for row, body in bodies if body.get("access_log_head")]
    got = access.check(engine, heads)
    report.breaks.extend(got.breaks)
    report.access_log = {"entries": got.entries, "anchored": got.entries - got.unanchored, "unanchored": got.unanchored}
    if got.unchained:
        report.notes.append(f"access log: {got.unchained} entr(ies) written before the log was chained carry no hash: "
                            "not tamper-evident")
    if got.unanchored:
        report.notes.append(f"access log: {got.unanchored} entr(ies) after the newest head a manifest recorded are not yet "
                            "anchored (the next publication anchors them); until then they can be removed unseen")


def _check_releases(engine: sa.Engine, bodies: list[tuple[object, dict]], report: VerifyReport) -> None:
    """Every release row a manifest recorded is unchanged; every published release has such a record."""
    from hub.lineage.schema import releases

    recorded = {}
    for row, body in bodies:
        entry = body.get("summary", {}).get("release_record")
        if entry:
            recorded[entry["release_id"]] = (row.seq, entry)
    manifest_of = {row.run_id: row.seq for row, body in bodies if body.get("summary", {}).get("kind") == "research-release"}
    with engine.connect() as conn:
        live = {r.release_id: r for r in conn.execute(sa.select(releases))}
    for release_id, (seq, entry) in sorted(recorded.items(), key=lambda kv: kv[1][0]):
        r = live.get(release_id)
        if r is None:
            report.breaks.append(f"release {entry['name']} ({release_id}), recorded by manifest {seq}, is gone from hub_releases")
            continue
        report.releases += 1
        now = release_entry(r.release_id, r.name, r.k, r.status, r.ruleset, r.key_id, r.risk_report, r.snapshots)
        changed = [k for k in entry if entry[k] != now.get(k)]
        if changed:
            report.breaks.append(f"release {entry['name']} ({release_id}): {', '.join(changed).replace('_sha256', '')} in "
                                 f"hub_releases differ from what manifest {seq} recorded (edited)")
    for release_id, r in sorted(live.items()):
        if r.status == "published" and release_id not in recorded:
            if release_id in manifest_of:
                report.notes.append(f"release {r.name} ({release_id}): its manifest {manifest_of[release_id]} predates "
                                    "release records; its hub_releases row is not checked")
            else:
                report.breaks.append(f"release {r.name} ({release_id}) is marked published in hub_releases but no manifest "
                                     "records it (inserted or edited outside a release)")


def _check_stores(bodies: list[tuple[object, dict]], stores: dict[str, Callable[[], dict | None]],
                  report: VerifyReport) -> None:
    """Each store's builds link up (what one left is what the next found) and the live content is what the last left."""
    recorded: dict[str, list[tuple[int, dict]]] = {}
    for row, body in bodies:
        for store, state in body.get("summary", {}).get("store_states", {}).items():
            recorded.setdefault(store, []).append((row.seq, state))
    for store, appended in sorted(recorded.items()):
        chain = _build_order(appended)
        for (seq_a, a), (seq_b, b) in zip(chain, chain[1:], strict=False):
            _compare_store(f"{store}: between build manifests {seq_a} and {seq_b}", a["after"], b["before"],
                           "changed outside a build", report)
        first_seq, first = chain[0]
        if any(t["rows"] for t in first["before"].values()):
            report.notes.append(f"{store}: held rows before its first recorded build (manifest {first_seq}); "
                                "those are vouched for only from then on")
        get = stores.get(store)
        if get is None:
            report.notes.append(f"{store}: content recorded by manifest {chain[-1][0]} not compared (no way to read the store here)")
            continue
        live = get()
        if live is None:
            report.breaks.append(f"{store}: recorded by manifest {chain[-1][0]} but the store is gone")
            continue
        report.stores.append(store)
        _compare_store(f"{store}: live content differs from what build manifest {chain[-1][0]} recorded",
                       chain[-1][1]["after"], live, "edited outside a build", report)


def _build_order(states: list[tuple[int, dict]]) -> list[tuple[int, dict]]:
    """Builds in the order they wrote: each next is the one that found what the last left (two builds may
    append their manifests in the other order); chain order where nothing links (a break to report)."""
    pending = sorted(states, key=lambda x: x[0])
    afters = [st["after"] for _, st in pending]
    start = next((i for i, (_, st) in enumerate(pending) if st["before"] not in afters), 0)
    ordered = [pending.pop(start)]
    while pending:
        last = ordered[-1][1]["after"]
        ordered.append(pending.pop(next((i for i, (_, st) in enumerate(pending) if st["before"] == last), 0)))
    return ordered


def _compare_store(where: str, recorded: dict, live: dict, cause: str, report: VerifyReport) -> None:
    diffs = []
    for table, rec in sorted(recorded.items()):
        now = live.get(table)
        if now is None:
            diffs.append(f"table {table} is gone")
        elif now["columns"] != rec["columns"]:
            report.notes.append(f"{where}: table {table} has other columns ({rec['columns']} -> {now['columns']}): "
                                "a code upgrade; its content is not compared")
        elif now["rows"] != rec["rows"]:
            diffs.append(f"table {table} holds {now['rows']} rows, recorded {rec['rows']}")
        elif now["sha256"] != rec["sha256"]:
            diffs.append(f"table {table} content differs ({rec['rows']} rows; values edited)")
    if diffs:
        report.breaks.append(f"{where}: {'; '.join(diffs)} ({cause})")


def _rehash(what: str, path: str, sha256: str, hashed: set[str], report: VerifyReport) -> None:
    if path in hashed:
        return
    hashed.add(path)
    report.files += 1
    local = local_path(path)
    if not local.exists():
        report.breaks.append(f"{what} missing: {local}")
    elif file_sha256(local) != sha256:
        report.breaks.append(f"{what} altered: {local}")


def _check_table(engine: sa.Engine, icat: Catalog, name: str, recorded: dict[int, _Recorded],
                 recorded_files: dict[str, tuple[int, str, dict]], check_from: int, in_flight: dict[str, str],
                 referenced: set[str], report: VerifyReport, states: list[tuple[int, bool, dict]],
                 expired: dict[int, int] | None = None, readable: set[str] | None = None) -> None:
    """Compare one table's live history, metadata and current files with what the chain records for it.

    expired: snapshot ids a maintenance manifest expired (-> its seq); their absence is a note."""
    expired = expired or {}
    try:
        table = icat.load_table(name)
    except NoSuchTableError:
        first = min(r.seq for r in recorded.values())
        report.breaks.append(f"{name}: recorded by manifest {first} but no longer in the catalog (dropped)")
        return
    report.tables += 1
    files = _Files(table)
    live = {s.snapshot_id: s for s in table.snapshots()}
    for s in live.values():
        referenced.update(files.referenced(s))
        if readable is not None:
            readable.update(files.live(s))
    current = table.current_snapshot()
    on_path = _ancestry(table)
    ancestry = list(on_path.values())
    # history truncated by a recorded expiry: fold the recorded snapshots before the oldest kept one first,
    # following the recorded parent links (back through expired and kept-but-off-path snapshots alike)
    first = recorded.get(ancestry[0].snapshot_id) if ancestry and ancestry[0].parent_snapshot_id is None else None
    pid, before = (first.snapshot.get("parent") if first else None), []
    if pid in expired:
        while pid is not None and pid in recorded and pid not in on_path and pid not in before:
            before.append(pid)
            pid = recorded[pid].snapshot.get("parent")
    _check_state(name, table, states, report)
    created = {path: (rec.seq, digest) for rec in recorded.values() for path, digest in rec.snapshot.get("manifests", {}).items()}
    hashed_meta: set[str] = set()

    for sid, s in sorted(live.items(), key=lambda kv: kv[1].timestamp_ms):
        report.snapshots += 1
        rec = recorded.get(sid)
        if rec is None:
            added, removed = _delta(files, s)
            claimed = _props(s).get("hub.run-id")
            what = (f"{name}: snapshot {sid} ({_operation(s)}, {len(added)} file(s) added, {len(removed)} removed, "
                    f"labelled run {claimed or 'none'})")
            if claimed in in_flight:
                report.notes.append(f"{what} is in flight: its run is still running and will record it")
                continue
            status = _run_status(engine, claimed)
            cause = {"running": "its run is still marked running (in flight, or killed after its commit)",
                     "failed": "its run failed after its commit, before writing its manifest"}.get(status, "committed outside any publication")
            report.breaks.append(f"{what} is in no manifest: {cause}; review it, then `hub audit adopt {name} {sid}` "
                                 "if it is legitimate")
            continue
        if rec.adopted:
            report.notes.append(f"{name}: snapshot {sid} was adopted by manifest {rec.seq}")
        if rec.seq >= check_from or s is current:
            _check_manifest_files(name, table, s, rec, created, hashed_meta, report)
        if "schema_id" in rec.snapshot and rec.snapshot["schema_id"] != s.schema_id:
            report.breaks.append(f"{name}: snapshot {sid} reads with schema {s.schema_id}, manifest {rec.seq} recorded "
                                 f"schema {rec.snapshot['schema_id']} (metadata edited)")
        if rec.snapshot.get("parent") != s.parent_snapshot_id and not (
                s.parent_snapshot_id is None and rec.snapshot.get("parent") in expired):  # expiry nulls the parent
            report.breaks.append(f"{name}: snapshot {sid} has parent {s.parent_snapshot_id} in the table but "
                                 f"{rec.snapshot.get('parent')} in manifest {rec.seq} (history rewritten)")
        if rec.snapshot.get("withdrawn"):
            if sid in on_path:
                report.breaks.append(f"{name}: snapshot {sid}, withdrawn by its publication (manifest {rec.seq}), is in the "
                                     "current history again (rolled forward outside a publication)")
        elif sid not in on_path and sid not in before:  # before: kept (tagged) ancestors beyond an expired gap
            report.breaks.append(f"{name}: snapshot {sid} (manifest {rec.seq}) is not in the current history: readers see "
                                 f"snapshot {current.snapshot_id if current else 'none'} (rolled back, or history rewritten)")
    gone = sorted(sid for sid in recorded if sid not in live and sid in expired)
    if gone:
        report.notes.append(f"{name}: {len(gone)} snapshot(s) expired by maintenance manifest(s) "
                            f"{', '.join(str(q) for q in sorted({expired[sid] for sid in gone}))}")
    for sid, rec in sorted(recorded.items(), key=lambda kv: kv[1].seq):
        if sid not in live and sid not in expired:
            report.breaks.append(f"{name}: snapshot {sid}, recorded by manifest {rec.seq}, is missing from the table's history "
                                 "(catalog rolled back to older metadata, or metadata edited)")

    # What the chain says is live, folded along the current history (unrecorded snapshots, already
    # reported, contribute what the table says they did, so one break is not reported twice).
    state: dict[str, int | None] = {}
    for sid in reversed(before):
        for p in recorded[sid].snapshot.get("removed", []):
            state.pop(p, None)
        state.update(dict.fromkeys(recorded[sid].snapshot.get("added", []), recorded[sid].seq))
    for s in ancestry:
        rec = recorded.get(s.snapshot_id)
        if rec is None:
            added, removed = _delta(files, s)
            for p in removed:
                state.pop(p, None)
            state.update(dict.fromkeys(added))
        else:
            for p in rec.snapshot.get("removed", []):
                state.pop(p, None)
            state.update(dict.fromkeys(rec.snapshot.get("added", []), rec.seq))
        if s is ancestry[-1] or (rec is not None and rec.seq >= check_from):
            _compare(name, s, files.live(s), state, recorded_files, report)


def _compare(name: str, snapshot: Snapshot, live: dict, expected: dict[str, int | None],
             recorded_files: dict[str, tuple[int, str, dict]], report: VerifyReport) -> None:
    sid = snapshot.snapshot_id
    for p in sorted(live.keys() - expected.keys()):
        report.breaks.append(f"{name}: snapshot {sid} reads data file {local_path(p)}, which no manifest records "
                             "(added outside a publication, e.g. add_files, or metadata edited)")
    for p in sorted(expected.keys() - live.keys()):
        seq = expected[p] if expected[p] is not None else recorded_files.get(p, (None,))[0]
        report.breaks.append(f"{name}: snapshot {sid} no longer reads data file {local_path(p)}, which manifest {seq} "
                             "records as live (removed outside a publication, or metadata edited)")
