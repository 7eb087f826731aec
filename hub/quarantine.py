"""Quarantine: source rows that could not be published, encrypted, with reasons in clear.

The source row (identifiable) is sealed with AES-GCM under the ``quarantine`` purpose key
and never written in clear. The reason names row key, element, problem and expectation;
it shows source values only from the mapping block's ``safe_columns`` (see
``hub.mapping.compile.withheld``), and every identifier ``hub.identifiers`` finds is
redacted again here before storage, so it can be read by anyone operating the hub. Nothing
is lost: an authorised operator can open the row (``hub quarantine show``, with the key)
and replay it after a fix.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass

import sqlalchemy as sa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from deid.keys import Keyring
from hub.errors import NotFound
from hub.identifiers import redact_identifiers
from hub.lineage.schema import quarantine


@dataclass(frozen=True)
class QuarantinedRow:
    """One rejected row before storage: where it came from, why, and the row itself."""

    feed: str
    mapping: str
    source_table: str
    resource_type: str
    source_key_hash: str
    cause: str  # short grouping label: element + problem
    reason: str  # full text, no identifiers
    row: dict  # the source row; encrypted before storage


def _json_default(obj):
    if isinstance(obj, dt.date | dt.datetime):
        return obj.isoformat()
    return str(obj)


def _aad(institution: str, source_key_hash: str) -> bytes:
    return f"{institution}|{source_key_hash}".encode()


def store(engine: sa.Engine, keys: Keyring, run_id: str, institution: str, rows: list[QuarantinedRow]) -> None:
    """Encrypt and store rejected rows in one transaction: one open entry per source row.

    A row already open in quarantine (rejected by an earlier run and not yet fixed) keeps its
    entry, updated with this run's content, reason and run id; a feed re-read every run
    (no update column) therefore never piles up entries.
    """
    if not rows:
        return
    aes = AESGCM(keys.key("quarantine"))
    now = dt.datetime.now(dt.UTC)
    records = []
    for r in rows:
        nonce = os.urandom(12)
        payload = aes.encrypt(nonce, json.dumps(r.row, default=_json_default, ensure_ascii=False).encode(), _aad(institution, r.source_key_hash))
        records.append({
            "run_id": run_id, "institution": institution, "feed": r.feed, "mapping": r.mapping,
            "source_table": r.source_table, "resource_type": r.resource_type,
            "source_key_hash": r.source_key_hash, "cause": redact_identifiers(r.cause)[:256],
            "reason": redact_identifiers(r.reason), "key_id": keys.key_id, "nonce": nonce, "payload": payload,
            "created_at": now, "status": "open",
        })
    with engine.begin() as conn:
        existing: dict[tuple[str, str, str], int] = {}
        for (table, rtype), hashes in _by_block(rows).items():
            existing.update(_open_ids(conn, institution, table, rtype, hashes))
        updates, inserts = [], []
        for rec in records:
            entry = existing.get((rec["source_table"], rec["resource_type"], rec["source_key_hash"]))
            (updates if entry is not None else inserts).append({**rec, "entry": entry} if entry is not None else rec)
        if updates:  # one open entry per source row: a row rejected again replaces its entry's content in place
            conn.execute(quarantine.update().where(quarantine.c.id == sa.bindparam("entry")).values(
                {c: sa.bindparam(c) for c in ("run_id", "feed", "mapping", "cause", "reason", "key_id", "nonce", "payload", "created_at")}),
                [{k: u[k] for k in ("entry", "run_id", "feed", "mapping", "cause", "reason", "key_id", "nonce", "payload", "created_at")} for u in updates])
        if inserts:
            conn.execute(quarantine.insert(), inserts)


def _open_ids(conn, institution: str, table: str, resource_type: str, hashes: list[str]) -> dict[tuple[str, str, str], int]:
    out = {}
    for i in range(0, len(hashes), 900):
        for entry, skh in conn.execute(sa.select(quarantine.c.id, quarantine.c.source_key_hash).where(
            quarantine.c.status == "open", quarantine.c.institution == institution,
            quarantine.c.source_table == table, quarantine.c.resource_type == resource_type,
            quarantine.c.source_key_hash.in_(hashes[i : i + 900]),
        )):
            out[(table, resource_type, skh)] = entry
    return out


def _by_block(rows: list[QuarantinedRow]) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        out.setdefault((r.source_table, r.resource_type), []).append(r.source_key_hash)
    return out


def _close(conn, institution: str, table: str, resource_type: str, hashes: list[str], status: str, run_id: str) -> int:
    total = 0
    for i in range(0, len(hashes), 900):
        total += conn.execute(quarantine.update().where(
            quarantine.c.status == "open", quarantine.c.institution == institution,
            quarantine.c.source_table == table, quarantine.c.resource_type == resource_type,
            quarantine.c.source_key_hash.in_(hashes[i : i + 900]),
        ).values(status=status, closed_by=run_id)).rowcount
    return total


def has_open(engine: sa.Engine, institution: str, table: str, resource_type: str) -> bool:
    with engine.connect() as conn:
        return conn.execute(sa.select(quarantine.c.id).where(
            quarantine.c.status == "open", quarantine.c.institution == institution,
            quarantine.c.source_table == table, quarantine.c.resource_type == resource_type,
        ).limit(1)).first() is not None


def resolve_published(engine: sa.Engine, institution: str, table: str, resource_type: str, hashes: list[str], run_id: str) -> int:
    """Close the open entries of rows that this run has now published."""
    with engine.begin() as conn:
        return _close(conn, institution, table, resource_type, hashes, "resolved", run_id)


def list_rows(
    engine: sa.Engine, run_id: str | None = None, institution: str | None = None,
    status: str | None = None, ids: list[int] | None = None,
) -> list[dict]:
    """Quarantine entries without their payloads (safe to print)."""
    cols = [c for c in quarantine.c if c.name not in ("payload", "nonce")]
    q = sa.select(*cols).order_by(quarantine.c.id)
    if run_id:
        q = q.where(quarantine.c.run_id == run_id)
    if institution:
        q = q.where(quarantine.c.institution == institution)
    if status:
        q = q.where(quarantine.c.status == status)
    if ids:
        q = q.where(quarantine.c.id.in_(ids))
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(q)]


def open_row(engine: sa.Engine, keys: Keyring, entry_id: int, key_file=None) -> dict:
    """Decrypt one quarantined source row (authorised operators only: needs the master key).

    A row sealed under a retired key is opened with that key, found next to key_file.
    """
    with engine.connect() as conn:
        rec = conn.execute(sa.select(quarantine).where(quarantine.c.id == entry_id)).one_or_none()
    if rec is None:
        raise NotFound(f"no quarantine entry {entry_id}")
    if rec.key_id != keys.key_id:
        from deid.keys import keyring_for

        keys = keyring_for(key_file, rec.key_id)
    plain = AESGCM(keys.key("quarantine")).decrypt(rec.nonce, rec.payload, _aad(rec.institution, rec.source_key_hash))
    return json.loads(plain)
