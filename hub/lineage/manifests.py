"""Tamper-evident history: a hash chain of signed publication manifests.

After each successful publication, a manifest records what it wrote: for every table, the
snapshots the run committed and every data file they added, with its SHA-256, size and row
count, plus the run's lineage summary. Each manifest carries the hash of the previous one
and is signed with Ed25519 (a key derived from the master key). ``verify`` re-hashes the
chain and every recorded data file, checks every signature, and names the manifest and
file of each break.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from deid.keys import Keyring, MasterKeyError, keyring_for
from hub.lineage.catalog import metadata

manifests = sa.Table(
    "hub_manifests", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("run_id", sa.String(80), nullable=False, index=True),
    sa.Column("key_id", sa.String(32), nullable=False),
    sa.Column("body", sa.Text, nullable=False),  # canonical JSON, includes prev_hash
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("signature", sa.String(128), nullable=False),
    sa.Column("public_key", sa.String(64), nullable=False),
)
GENESIS = "0" * 64


def signing_key(keys: Keyring) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(keys.key("manifest-signing"))


def _public_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


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


def run_files(table, run_id: str) -> tuple[list[int], list[dict]]:
    """Snapshots a run committed to a table (by the hub.run-id property) and the data files they added."""
    snaps = [s for s in table.snapshots() if (s.summary.additional_properties if s.summary else {}).get("hub.run-id") == run_id]
    ids = {s.snapshot_id for s in snaps}
    files = []
    for s in snaps:
        for mf in s.manifests(table.io):
            for entry in mf.fetch_manifest_entry(table.io, discard_deleted=True):
                if entry.snapshot_id in ids and entry.status.name == "ADDED":
                    path = local_path(entry.data_file.file_path)
                    files.append({"path": entry.data_file.file_path, "sha256": file_sha256(path),
                                  "bytes": entry.data_file.file_size_in_bytes, "rows": entry.data_file.record_count})
    unique = {f["path"]: f for f in files}
    return sorted(ids), [unique[p] for p in sorted(unique)]


def append(engine: sa.Engine, keys: Keyring, run_id: str, tables: dict[str, object], summary: dict) -> tuple[int, str]:
    """Append a signed manifest for what run_id wrote to tables ({name: pyiceberg Table}). Returns (seq, hash)."""
    content = {}
    for name, table in sorted(tables.items()):
        snapshot_ids, files = run_files(table, run_id)
        if snapshot_ids:
            content[name] = {"snapshot_ids": snapshot_ids, "files": files}
    key = signing_key(keys)
    with engine.begin() as conn:
        last = conn.execute(sa.select(manifests.c.seq, manifests.c.hash).order_by(manifests.c.seq.desc()).limit(1)).first()
        seq, prev = (last.seq + 1, last.hash) if last else (1, GENESIS)
        body = {"seq": seq, "prev_hash": prev, "created_at": dt.datetime.now(dt.UTC).isoformat(), "run_id": run_id,
                "key_id": keys.key_id, "tables": content, "summary": summary}
        text = _canonical(body)
        digest = hashlib.sha256(text.encode()).hexdigest()
        conn.execute(manifests.insert().values(
            seq=seq, created_at=dt.datetime.now(dt.UTC), run_id=run_id, key_id=keys.key_id, body=text, hash=digest,
            signature=key.sign(bytes.fromhex(digest)).hex(), public_key=_public_hex(key),
        ))
    return seq, digest


@dataclass
class VerifyReport:
    manifests: int = 0
    files: int = 0
    breaks: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.breaks


def verify(engine: sa.Engine, keys: Keyring, key_file: Path | None = None, last: int | None = None) -> VerifyReport:
    """Re-check the chain (hashes, links, signatures by known keys) and every recorded data file."""
    report = VerifyReport()
    with engine.connect() as conn:
        rows = list(conn.execute(sa.select(manifests).order_by(manifests.c.seq)))
    prev = GENESIS
    check_from = rows[-last].seq if last and len(rows) >= last else 0
    for row in rows:
        report.manifests += 1
        where = f"manifest {row.seq} (run {row.run_id})"
        digest = hashlib.sha256(row.body.encode()).hexdigest()
        if digest != row.hash:
            report.breaks.append(f"{where}: content does not match its hash (edited after signing)")
        body = json.loads(row.body)
        if body.get("prev_hash") != prev:
            report.breaks.append(f"{where}: does not link to manifest {row.seq - 1} (chain broken)")
        if body.get("seq") != row.seq:
            report.breaks.append(f"{where}: sequence number altered")
        prev = row.hash
        try:
            expected = _public_hex(signing_key(keyring_for(key_file, row.key_id) if row.key_id != keys.key_id else keys))
        except MasterKeyError:
            report.breaks.append(f"{where}: signed with key {row.key_id}, which this hub does not hold")
            expected = None
        if expected is not None:
            if row.public_key != expected:
                report.breaks.append(f"{where}: signed by a key that is not the hub's key {row.key_id}")
            try:
                Ed25519PublicKey.from_public_bytes(bytes.fromhex(row.public_key)).verify(bytes.fromhex(row.signature), bytes.fromhex(row.hash))
            except (InvalidSignature, ValueError):
                report.breaks.append(f"{where}: signature does not verify")
        if row.seq < check_from:
            continue
        for table, entry in body.get("tables", {}).items():
            for f in entry.get("files", []):
                report.files += 1
                path = local_path(f["path"])
                if not path.exists():
                    report.breaks.append(f"{where}: {table} data file missing: {path}")
                elif file_sha256(path) != f["sha256"]:
                    report.breaks.append(f"{where}: {table} data file altered: {path}")
    return report
