"""The run record: runs and their row counts per institution, feed and resource type.

Kept with SQLAlchemy in the same database as the Iceberg catalog (SQLite by default).
Every run records rows read, published and quarantined, so rows in = published +
quarantined can be checked per run.

Runs of one institution never overlap: a run holds the institution's lock
(``hub_run_locks``, one row per institution, taken by an INSERT that the primary key makes
atomic on SQLite and PostgreSQL alike) from before it reads a source until it has
committed. A windowed run (one day of a backfill) holds ``<institution>@<day>`` instead, so
days of one institution run at once. A lock whose holder died (kill -9, a lost machine) is taken over: on the same
host when its process is gone, elsewhere when its heartbeat is older than STALE_AFTER.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import time
from pathlib import Path

import sqlalchemy as sa

from hub.errors import CommandFailed
from hub.lineage.schema import metadata, run_counts, run_locks, runs  # noqa: F401 - metadata: re-exported

#: A lock held from another host is stale when its heartbeat is older than this.
STALE_AFTER = dt.timedelta(minutes=10)
#: A running run refreshes its heartbeat at most this often.
HEARTBEAT_EVERY = 30.0


def connect(url: str) -> sa.Engine:
    """Engine for the catalog database, with hub's tables created if missing."""
    engine = sa.create_engine(url)
    create_all_concurrently(metadata, engine)
    return engine


def create_all_concurrently(md: sa.MetaData, engine: sa.Engine, tables: list[sa.Table] | None = None, attempts: int = 5) -> None:
    """metadata.create_all, safe when several processes open a new database at once.

    create_all checks, then creates: a second process can create a table in between, and
    the loser's CREATE fails ("already exists"). Trying again sees the table and skips it.
    """
    for attempt in range(attempts):
        try:
            md.create_all(engine, tables=tables)
            return
        except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError) as exc:
            if "exist" not in str(exc.orig).lower() and "duplicate" not in str(exc.orig).lower() or attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def start_run(engine: sa.Engine, run_id: str, institution: str, key_id: str, ruleset: str, code_version: str) -> None:
    with engine.begin() as conn:
        conn.execute(runs.insert().values(
            run_id=run_id, institution=institution, started_at=dt.datetime.now(dt.UTC),
            status="running", key_id=key_id, ruleset=ruleset, code_version=code_version,
        ))


def finish_run(engine: sa.Engine, run_id: str, status: str, counts: list[dict], report: dict) -> None:
    with engine.begin() as conn:
        if counts:
            conn.execute(run_counts.insert(), [{"run_id": run_id, **c} for c in counts])
        conn.execute(runs.update().where(runs.c.run_id == run_id).values(
            finished_at=dt.datetime.now(dt.UTC), status=status, report=json.dumps(report, ensure_ascii=False),
        ))


def counts_for_run(engine: sa.Engine, run_id: str) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(run_counts).where(run_counts.c.run_id == run_id))]


class InstitutionBusy(CommandFailed):
    """Another live run holds the institution's lock."""


def _process_token(pid: int) -> str:
    """pid plus the process's start time (Linux), so a pid reused after a crash is not the holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return f"{pid}:{stat.rsplit(')', 1)[1].split()[19]}"
    except (OSError, IndexError):
        return f"{pid}:"


def _holder_alive(host: str, process: str, heartbeat_at: dt.datetime, now: dt.datetime) -> bool:
    if host != socket.gethostname():
        beat = heartbeat_at if heartbeat_at.tzinfo else heartbeat_at.replace(tzinfo=dt.UTC)
        return now - beat < STALE_AFTER
    pid = int(process.split(":", 1)[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return _process_token(pid) == process


def acquire_lock(engine: sa.Engine, institution: str, run_id: str, wait: float = 0.0) -> list[str]:
    """Take the institution's run lock for run_id, waiting up to wait seconds for a live holder.

    A dead holder's lock is taken over and its run marked failed. Returns the ids of runs
    found still 'running' (killed earlier) and now marked failed. Raises InstitutionBusy.
    """
    deadline = time.monotonic() + wait
    me = {"host": socket.gethostname(), "process": _process_token(os.getpid())}
    while True:
        now = dt.datetime.now(dt.UTC)
        try:
            with engine.begin() as conn:
                conn.execute(run_locks.insert().values(institution=institution, run_id=run_id, acquired_at=now, heartbeat_at=now, **me))
            break
        except sa.exc.IntegrityError:
            pass
        with engine.connect() as conn:
            held = conn.execute(sa.select(run_locks).where(run_locks.c.institution == institution)).first()
        if held is None:
            continue  # released between our insert and our look
        if not _holder_alive(held.host, held.process, held.heartbeat_at, now):
            with engine.begin() as conn:  # compare-and-delete: only the dead holder's row
                conn.execute(run_locks.delete().where(run_locks.c.institution == institution, run_locks.c.run_id == held.run_id))
            continue
        if time.monotonic() >= deadline:
            since = held.acquired_at.strftime("%Y-%m-%d %H:%M:%S")
            raise InstitutionBusy(
                f"{institution} is being published by run {held.run_id} (process {held.process.split(':')[0]} on {held.host}, "
                f"since {since} UTC); wait for it to finish (or pass --wait SECONDS), then run again", 2)
        time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
    return _fail_abandoned_runs(engine, institution, run_id)


def _fail_abandoned_runs(engine: sa.Engine, institution: str, run_id: str) -> list[str]:
    """Runs of the institution still marked running whose process died (we hold the lock now).

    institution: a lock key, the institution's id or ``<id>@<day>`` (a windowed run's lock); runs of
    the institution that hold another lock of it with a live holder (windowed runs) are not dead.
    """
    institution = institution.split("@", 1)[0]
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        ids = [r for (r,) in conn.execute(sa.select(runs.c.run_id).where(
            runs.c.institution == institution, runs.c.status == "running", runs.c.run_id != run_id))]
        held = conn.execute(sa.select(run_locks).where(run_locks.c.run_id.in_(ids))).all() if ids else []
        live = {h.run_id for h in held if _holder_alive(h.host, h.process, h.heartbeat_at, now)}
        ids = [r for r in ids if r not in live]
        if ids:
            note = json.dumps({"failed": f"the run's process ended without finishing; found by run {run_id}"})
            conn.execute(runs.update().where(runs.c.run_id.in_(ids)).values(
                status="failed", finished_at=dt.datetime.now(dt.UTC), report=note))
    return ids


def live_locks(engine: sa.Engine, prefix: str) -> list[str]:
    """Lock keys starting with prefix whose holder is alive (``<institution>@`` finds its windowed runs)."""
    now = dt.datetime.now(dt.UTC)
    with engine.connect() as conn:
        held = conn.execute(sa.select(run_locks).where(run_locks.c.institution.startswith(prefix, autoescape=True))).all()
    return [h.institution for h in held if _holder_alive(h.host, h.process, h.heartbeat_at, now)]


def heartbeat(engine: sa.Engine, institution: str, run_id: str) -> None:
    """Tell other hosts the lock's holder is alive."""
    with engine.begin() as conn:
        conn.execute(run_locks.update().where(run_locks.c.institution == institution, run_locks.c.run_id == run_id)
                     .values(heartbeat_at=dt.datetime.now(dt.UTC)))


def release_lock(engine: sa.Engine, institution: str, run_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(run_locks.delete().where(run_locks.c.institution == institution, run_locks.c.run_id == run_id))


def last_status(engine: sa.Engine, institution: str, exclude: str | None = None) -> str | None:
    """The status of the institution's most recent run other than exclude (None if it has none)."""
    q = sa.select(runs.c.status).where(runs.c.institution == institution)
    if exclude:
        q = q.where(runs.c.run_id != exclude)
    with engine.connect() as conn:
        return conn.execute(q.order_by(runs.c.started_at.desc()).limit(1)).scalar_one_or_none()
