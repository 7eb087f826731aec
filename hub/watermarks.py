"""Watermarks: how far each (institution, feed, mapping block) has been published.

A watermark advances only after the rows up to it are committed (published to the
lakehouse or stored in quarantine), so a crash before the advance re-reads those rows on
the next run: the upsert by id makes that harmless, and nothing is skipped.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from hub.lineage.schema import watermarks


def get(engine: sa.Engine, institution: str, feed: str, block: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(sa.select(watermarks.c.value).where(
            watermarks.c.institution == institution, watermarks.c.feed == feed, watermarks.c.block == block,
        )).scalar_one_or_none()


def advance(engine: sa.Engine, institution: str, feed: str, block: str, kind: str, value: object, run_id: str) -> None:
    """Record that every row up to value is committed. Never moves a watermark backwards."""
    text = value.isoformat(sep=" ") if isinstance(value, dt.datetime) else str(value)
    with engine.begin() as conn:
        where = (watermarks.c.institution == institution, watermarks.c.feed == feed, watermarks.c.block == block)
        current = conn.execute(sa.select(watermarks.c.value).where(*where)).scalar_one_or_none()
        row = {"kind": kind, "value": text, "run_id": run_id, "updated_at": dt.datetime.now(dt.UTC)}
        if current is None:
            conn.execute(watermarks.insert().values(institution=institution, feed=feed, block=block, **row))
        elif _after(text, current, kind):
            conn.execute(watermarks.update().where(*where).values(**row))


def _after(new: str, old: str, kind: str) -> bool:
    if kind == "key" and new.lstrip("-").isdigit() and old.lstrip("-").isdigit():
        return int(new) > int(old)
    return new > old
