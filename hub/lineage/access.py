"""The access log: every read through hub, who, when, for what purpose, and what it read.

Entries are append-only rows in the catalog database. They never hold an identifier: a
read is described by the tables, snapshots and row counts it touched. ``as_audit_events``
exports them as FHIR R4 AuditEvent resources for the region's audit repository.

The log is a hash chain: each entry carries the SHA-256 of its own content and of the entry
before it (``entry_hash``), so deleting, editing or reordering an entry breaks the chain.
Whoever can write the database can rebuild the whole chain, so every signed publication
manifest records the log's head at its time (``head``); ``check`` re-walks the log and
compares it with those heads: entries up to the newest recorded head are anchored, later
ones are not yet.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import json
import os
from dataclasses import dataclass, field

import sqlalchemy as sa

from hub.lineage.schema import PREV_INDEX, access_log

GENESIS = "0" * 64
_APPEND_TRIES = 20
_chained: set[str] = set()


def ensure_chain(engine: sa.Engine) -> None:
    """Add the chain's columns to a log made before they existed (its older entries stay unchained)."""
    key = engine.url.render_as_string(hide_password=False)
    if key in _chained:
        return
    have = {c["name"] for c in sa.inspect(engine).get_columns(access_log.name)}
    with engine.begin() as conn:
        for col in ("prev_hash", "hash"):
            if col not in have:
                conn.execute(sa.text(f"ALTER TABLE {access_log.name} ADD COLUMN {col} VARCHAR(64)"))
    PREV_INDEX.create(engine, checkfirst=True)
    _chained.add(key)


def actor() -> str:
    """Who is reading: HUB_ACTOR when set (a service or a named operator), else the OS user."""
    return os.environ.get("HUB_ACTOR") or getpass.getuser()


def _utc_text(at: dt.datetime) -> str:
    """A timestamp as the database gives it back, whatever the backend (SQLite drops the zone)."""
    at = at.astimezone(dt.UTC) if at.tzinfo else at
    return at.replace(tzinfo=None).isoformat(timespec="microseconds")


def entry_hash(entry_id: int, at: dt.datetime, who: str, action: str, purpose: str, what: str, outcome: str,
               prev_hash: str) -> str:
    """SHA-256 over one entry's content and its predecessor's hash (length-prefixed fields: no ambiguity)."""
    h = hashlib.sha256()
    for value in (str(entry_id), _utc_text(at), who, action, purpose, what, outcome, prev_hash):
        raw = value.encode()
        h.update(b"%d:" % len(raw))
        h.update(raw)
    return h.hexdigest()


def record(engine: sa.Engine, action: str, purpose: str, what: dict, outcome: str = "success", who: str | None = None) -> None:
    """Append one entry, chained to the newest (a concurrent writer that took the same place makes this retry)."""
    text = json.dumps(what, ensure_ascii=False, sort_keys=True, default=str)
    who = who or actor()
    ensure_chain(engine)
    for attempt in range(_APPEND_TRIES):
        try:
            with engine.begin() as conn:
                last = conn.execute(sa.select(access_log.c.id, access_log.c.hash).order_by(access_log.c.id.desc()).limit(1)).first()
                entry_id, prev = (last.id + 1, last.hash or GENESIS) if last else (1, GENESIS)
                now = dt.datetime.now(dt.UTC)
                conn.execute(access_log.insert().values(
                    id=entry_id, at=now, who=who, action=action, purpose=purpose, what=text, outcome=outcome,
                    prev_hash=prev, hash=entry_hash(entry_id, now, who, action, purpose, text, outcome, prev),
                ))
            return
        except sa.exc.IntegrityError:  # another entry took this id or this predecessor: chain to it instead
            if attempt == _APPEND_TRIES - 1:
                raise


def head(conn: sa.Connection) -> dict | None:
    """{id, hash} of the newest entry (what a manifest records), or None for an empty log."""
    last = conn.execute(sa.select(access_log.c.id, access_log.c.hash).order_by(access_log.c.id.desc()).limit(1)).first()
    return {"id": last.id, "hash": last.hash} if last else None


@dataclass
class LogCheck:
    entries: int = 0
    unchained: int = 0  # entries written before the log was chained (no hash)
    breaks: list[str] = field(default_factory=list)
    unanchored: int = 0  # entries after the newest head a manifest recorded


def check(engine: sa.Engine, heads: list[tuple[int, dict]]) -> LogCheck:
    """Re-walk the chain in one ordered pass and compare it with the heads manifests recorded ((seq, {id, hash}))."""
    ensure_chain(engine)
    out = LogCheck()
    by_id: dict[int, str | None] = {}
    prev, prev_id = None, None
    with engine.connect() as conn:
        rows = conn.execute(sa.select(access_log).order_by(access_log.c.id).execution_options(yield_per=5000))
        for r in rows:
            out.entries += 1
            by_id[r.id] = r.hash
            if r.hash is None:
                if prev is not None:
                    out.breaks.append(f"access log entry {r.id} carries no hash after chained entries (inserted outside hub)")
                out.unchained += 1
                prev_id = r.id
                continue
            expected_prev = prev if prev is not None else GENESIS
            if r.prev_hash != expected_prev:
                gap = f"entry {prev_id}" if prev_id is not None else "the start of the log"
                out.breaks.append(f"access log entry {r.id} does not link to {gap} (entries deleted, inserted or reordered)")
            at = r.at
            if entry_hash(r.id, at, r.who, r.action, r.purpose, r.what, r.outcome, r.prev_hash or "") != r.hash:
                out.breaks.append(f"access log entry {r.id} does not match its hash (edited)")
            prev, prev_id = r.hash, r.id
    newest = 0
    for seq, recorded in heads:
        got = by_id.get(recorded["id"], "missing")
        if got == "missing":
            out.breaks.append(f"access log entry {recorded['id']}, the head manifest {seq} recorded, is gone "
                              f"(log {'emptied' if not by_id else 'truncated or entries deleted'})")
        elif got != recorded["hash"]:
            out.breaks.append(f"access log entry {recorded['id']} differs from the one manifest {seq} recorded "
                              "(the log was rewritten up to there)")
        newest = max(newest, recorded["id"])
    out.unanchored = sum(1 for i in by_id if i > newest)
    return out


def entries(engine: sa.Engine, who: str | None = None, action: str | None = None, since: dt.datetime | None = None) -> list[dict]:
    q = sa.select(access_log).order_by(access_log.c.id)
    if who:
        q = q.where(access_log.c.who == who)
    if action:
        q = q.where(access_log.c.action == action)
    if since:
        q = q.where(access_log.c.at >= since)
    with engine.connect() as conn:
        return [{**dict(r._mapping), "what": json.loads(r.what)} for r in conn.execute(q)]


_OUTCOME = {"success": "0", "refused": "4", "failure": "8"}


def as_audit_events(rows: list[dict]) -> list[dict]:
    """FHIR R4 AuditEvent resources (type: rest/query or export), one per entry."""
    out = []
    for r in rows:
        at = r["at"] if r["at"].tzinfo else r["at"].replace(tzinfo=dt.UTC)
        out.append({
            "resourceType": "AuditEvent", "id": f"hub-access-{r['id']}",
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"},
            "subtype": [{"system": "urn:hub:access-action", "code": r["action"]}],
            "action": "R", "recorded": at.isoformat(), "outcome": _OUTCOME.get(r["outcome"], "8"),
            "purposeOfEvent": [{"text": r["purpose"]}],
            "agent": [{"who": {"display": r["who"]}, "requestor": True}],
            "source": {"observer": {"display": "hub"}},
            "entity": [{"what": {"display": json.dumps(r["what"], ensure_ascii=False, sort_keys=True)}}],
        })
    return out
