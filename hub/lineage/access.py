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

``record`` appends one entry in its own transaction. A server answering many requests uses
an ``AccessLogWriter`` instead (group commit): each request hands over its entry and waits
until it is committed, while one thread appends every entry waiting, up to ``max_batch``, in
one transaction. An answered request therefore always has its entry, and the database
commits once per batch rather than once per request.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import json
import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field

import sqlalchemy as sa

from hub.lineage.schema import PREV_INDEX, access_log

GENESIS = "0" * 64
_APPEND_TRIES = 20
_PG_APPEND_LOCK = int.from_bytes(hashlib.sha256(b"hub_access_log append").digest()[:8], "big", signed=True)
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


@dataclass(frozen=True)
class _Entry:
    at: dt.datetime  # when the entry was handed over, not when it was committed
    who: str
    action: str
    purpose: str
    what: str  # JSON text
    outcome: str


def _entry(action: str, purpose: str, what: dict, outcome: str, who: str | None) -> _Entry:
    return _Entry(dt.datetime.now(dt.UTC), who or actor(), action, purpose,
                  json.dumps(what, ensure_ascii=False, sort_keys=True, default=str), outcome)


def _append(engine: sa.Engine, batch: list[_Entry]) -> None:
    """Append entries in one transaction, chained in order after the newest entry.

    A concurrent writer (another process, or a ``record`` in this one) that took the same
    place makes the insert fail on the id or the predecessor; the head is then read again
    and the whole batch chained to it. On PostgreSQL appenders first take a transaction
    lock, so they take turns instead of retrying: busy writers would otherwise keep
    winning the race against a slower one until its tries run out.
    """
    ensure_chain(engine)
    for attempt in range(_APPEND_TRIES):
        try:
            with engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_APPEND_LOCK})
                last = conn.execute(sa.select(access_log.c.id, access_log.c.hash).order_by(access_log.c.id.desc()).limit(1)).first()
                entry_id, prev = (last.id + 1, last.hash or GENESIS) if last else (1, GENESIS)
                rows = []
                for e in batch:
                    digest = entry_hash(entry_id, e.at, e.who, e.action, e.purpose, e.what, e.outcome, prev)
                    rows.append({"id": entry_id, "at": e.at, "who": e.who, "action": e.action, "purpose": e.purpose,
                                 "what": e.what, "outcome": e.outcome, "prev_hash": prev, "hash": digest})
                    entry_id, prev = entry_id + 1, digest
                conn.execute(access_log.insert(), rows)
            return
        except sa.exc.IntegrityError:  # another entry took this id or this predecessor: chain to it instead
            if attempt == _APPEND_TRIES - 1:
                raise


def record(engine: sa.Engine, action: str, purpose: str, what: dict, outcome: str = "success", who: str | None = None) -> None:
    """Append one entry, chained to the newest (a concurrent writer that took the same place makes this retry)."""
    _append(engine, [_entry(action, purpose, what, outcome, who)])


class AccessLogError(RuntimeError):
    """An access-log entry could not be committed: the read it describes must not be answered."""


def _failed(exc: BaseException) -> AccessLogError:
    cause = getattr(exc, "orig", None) or exc
    err = AccessLogError(f"the access log in the catalog database could not be written ({type(cause).__name__}: "
                         f"{str(cause).splitlines()[0] if str(cause) else 'no detail'})")
    err.__cause__ = exc
    return err


class AccessLogWriter:
    """Group commit for a server's access log: ``record`` returns once the entry is committed.

    ``start`` runs one background thread; each ``record`` queues its entry and waits. The
    thread takes every entry waiting (at most ``max_batch``), appends them in one transaction
    (one read of the head, one multi-row insert, the chain computed in queue order), commits
    and wakes their callers. If that fails, the entries are appended one by one, and each
    caller whose entry still fails gets an ``AccessLogError``. ``close``
    writes what is queued, then stops the thread. Before ``start`` and after ``close``,
    ``record`` appends its entry itself, as the module's ``record`` does.
    """

    def __init__(self, engine: sa.Engine, max_batch: int = 500):
        self.engine = engine
        self.max_batch = max_batch
        self._queue: list[tuple[_Entry, Future]] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        ensure_chain(self.engine)
        with self._cond:
            if self._thread is None:
                self._stopping = False
                self._thread = threading.Thread(target=self._run, name="hub-access-log", daemon=True)
                self._thread.start()

    def close(self) -> None:
        with self._cond:
            thread, self._stopping = self._thread, True
            self._cond.notify_all()
        if thread is not None:
            thread.join()
        with self._cond:
            if self._thread is thread:
                self._thread = None

    def record(self, action: str, purpose: str, what: dict, outcome: str = "success", who: str | None = None) -> None:
        """Append one entry and return once it is committed; ``AccessLogError`` if it could not be."""
        entry = _entry(action, purpose, what, outcome, who)
        done: Future = Future()
        with self._cond:
            queued = self._thread is not None and not self._stopping
            if queued:
                self._queue.append((entry, done))
                self._cond.notify()
        if not queued:
            try:
                _append(self.engine, [entry])
            except Exception as exc:
                raise _failed(exc) from exc
            return
        done.result()

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._stopping:
                        self._cond.wait()
                    if not self._queue:
                        return
                    batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
                try:
                    _append(self.engine, [entry for entry, _ in batch])
                except Exception:
                    # one entry the database refuses must not fail the others: each on its own, its error to its caller
                    for entry, done in batch:
                        try:
                            _append(self.engine, [entry])
                        except Exception as exc:
                            done.set_exception(_failed(exc))  # one exception object per waiter: each raises its own
                        else:
                            done.set_result(None)
                    continue
                except BaseException as exc:
                    for _, done in batch:
                        done.set_exception(_failed(exc))
                    raise
                for _, done in batch:
                    done.set_result(None)
        finally:
            with self._cond:  # the thread ends (stopped, or killed by a BaseException): nobody may wait for it
                left, self._queue = self._queue, []
                self._thread = None if self._thread is threading.current_thread() else self._thread
            for _, done in left:
                done.set_exception(AccessLogError("the access log writer stopped before this entry was written"))


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
