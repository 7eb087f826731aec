"""The run catalog: runs and their row counts per institution, feed and resource type.

Kept with SQLAlchemy in the same database as the Iceberg catalog (SQLite by default).
Every run records rows read, published and quarantined, so rows in = published +
quarantined can be checked per run.
"""

from __future__ import annotations

import datetime as dt
import json

import sqlalchemy as sa

metadata = sa.MetaData()

runs = sa.Table(
    "hub_runs", metadata,
    sa.Column("run_id", sa.String(40), primary_key=True),
    sa.Column("institution", sa.String(64), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("key_id", sa.String(32)),
    sa.Column("ruleset", sa.String(128)),
    sa.Column("code_version", sa.String(32)),
    sa.Column("report", sa.Text),
)

run_counts = sa.Table(
    "hub_run_counts", metadata,
    sa.Column("run_id", sa.String(40), nullable=False, index=True),
    sa.Column("institution", sa.String(64), nullable=False),
    sa.Column("feed", sa.String(64), nullable=False),
    sa.Column("mapping", sa.String(128), nullable=False),
    sa.Column("source_table", sa.String(128), nullable=False),
    sa.Column("resource_type", sa.String(64), nullable=False),
    sa.Column("rows_read", sa.Integer, nullable=False),
    sa.Column("published", sa.Integer, nullable=False),
    sa.Column("quarantined", sa.Integer, nullable=False),
    sa.Column("written", sa.Integer, nullable=False),
    sa.Column("unchanged", sa.Integer, nullable=False),
)


def connect(url: str) -> sa.Engine:
    """Engine for the catalog database, with hub's tables created if missing."""
    import hub.lineage.access  # noqa: F401  - every hub_* table registers on `metadata`
    import hub.lineage.manifests  # noqa: F401
    import hub.pipeline  # noqa: F401
    import hub.quarantine  # noqa: F401
    import hub.research  # noqa: F401
    import hub.watermarks  # noqa: F401

    engine = sa.create_engine(url)
    metadata.create_all(engine)
    return engine


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
