"""Batched extraction from HIS/LIS databases through SQLAlchemy.

Rows are streamed in bounded batches (``yield_per``), never the whole table in memory.
The select names exactly the columns a mapping block uses, with left outer joins so that a
row whose lookup is missing still arrives (and is quarantined with a reason, not lost).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence

import sqlalchemy as sa

from hub.yamlio import ConfigError


class SourceSchema:
    """Reflected tables of one source database, reflected once per table."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        self.metadata = sa.MetaData()

    def table(self, name: str) -> sa.Table:
        if name not in self.metadata.tables:
            sa.Table(name, self.metadata, autoload_with=self.engine)
        return self.metadata.tables[name]


def build_select(
    schema: SourceSchema,
    table: str,
    joins: Sequence[tuple[str, Sequence[tuple[str, str]]]],
    columns: Sequence[str],
    key: Sequence[str],
    where_file: str = "",
    where_line: int = 0,
    since: tuple[str, str, object] | None = None,
) -> sa.Select:
    """SELECT the qualified columns (``table.column``) from table LEFT JOIN each join table.

    since: (column, kind, last value) pulls only rows past a watermark, in watermark order:
    ``>=`` for an update timestamp (the last instant may hold more rows), ``>`` for a key.
    """

    def resolve(qualified: str) -> sa.Column:
        tname, cname = qualified.split(".", 1)
        try:
            t = schema.table(tname)
        except sa.exc.NoSuchTableError:
            raise ConfigError(where_file, where_line, qualified, f"table {tname!r} does not exist in the source", "a table of the source database") from None
        if cname not in t.c:
            raise ConfigError(where_file, where_line, qualified, f"column {cname!r} does not exist in table {tname!r}", f"one of {', '.join(t.c.keys())}")
        return t.c[cname]

    base = schema.table(table)
    from_clause: sa.FromClause = base
    for jtable, on in joins:
        jt = schema.table(jtable)
        cond = sa.and_(*[resolve(left) == resolve(f"{jtable}.{right}") for left, right in on])
        from_clause = from_clause.outerjoin(jt, cond)
    cols = [resolve(c).label(c) for c in columns]
    order = [resolve(k if "." in k else f"{table}.{k}") for k in key]
    select = sa.select(*cols).select_from(from_clause)
    if since is not None:
        column, kind, last = since
        wm = resolve(f"{table}.{column}")
        order = [wm, *order]
        if last is not None:
            last = _as_column_type(wm, last)
            select = select.where(wm >= last if kind == "timestamp" else wm > last)
    return select.order_by(*order)


def _as_column_type(column: sa.Column, value: object) -> object:
    """A stored watermark (text) as the column's Python type, so the database compares like with like."""
    try:
        py = column.type.python_type
    except NotImplementedError:
        return value
    if py is int:
        return int(value)
    if py is dt.datetime:
        return dt.datetime.fromisoformat(str(value))
    if py is dt.date:
        return dt.date.fromisoformat(str(value))
    return value


def iter_batches(engine: sa.Engine, select: sa.Select, batch_size: int = 5000) -> Iterator[list[tuple]]:
    """Stream the select's rows as lists of tuples of at most batch_size rows."""
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=batch_size).execute(select)
        for part in result.partitions(batch_size):
            yield [tuple(r) for r in part]
