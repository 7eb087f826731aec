"""`hub feeds check` samples across the whole table, not the first rows in key order."""

from __future__ import annotations

import sqlalchemy as sa

from hub.feeds import spread_sample
from hub.sources.sql import iter_batches


def test_the_sample_is_every_kth_row_over_the_whole_key_range(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'src.db'}")
    md = sa.MetaData()
    t = sa.Table("lab_result", md, sa.Column("id", sa.Integer, primary_key=True), sa.Column("value", sa.String))
    md.create_all(engine)
    with engine.begin() as conn:  # the oldest 300 rows are the odd ones, as in a real database
        conn.execute(t.insert(), [{"id": i, "value": "HOLD" if i <= 300 else "5.6"} for i in range(1, 1001)])
    select = sa.select(t.c.id.label("lab_result.id"), t.c.value.label("lab_result.value")).order_by(t.c.id)
    sampled, how = spread_sample(engine, select, 100)
    rows = [r for batch in iter_batches(engine, sampled) for r in batch]
    assert how == "every 10th of 1,000 rows in key order"
    assert [r[0] for r in rows] == list(range(1, 1001, 10))
    assert sum(r[1] == "5.6" for r in rows) == 70  # most of the sample is past the bad head of the table


def test_a_small_table_is_read_whole(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'src.db'}")
    md = sa.MetaData()
    t = sa.Table("t", md, sa.Column("id", sa.Integer, primary_key=True))
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(t.insert(), [{"id": i} for i in range(5)])
    select = sa.select(t.c.id).order_by(t.c.id)
    sampled, how = spread_sample(engine, select, 100)
    assert sampled is select and how == "all 5 rows"
