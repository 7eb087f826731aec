"""Batched extraction from HIS/LIS databases through SQLAlchemy.

Rows are streamed in bounded batches (``yield_per``), never the whole table in memory.
The select names exactly the columns a mapping block uses, with left outer joins so that a
row whose lookup is missing still arrives (and is quarantined with a reason, not lost).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import sqlalchemy as sa

from hub.yamlio import ConfigError

if TYPE_CHECKING:
    from hub.mapping.spec import Join, Unpivot


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
    joins: Sequence[Join],
    columns: Sequence[str],
    key: Sequence[str],
    where_file: str = "",
    where_line: int = 0,
    since: tuple[str, str, object] | None = None,
    unpivot: Unpivot | None = None,
) -> sa.Select:
    """SELECT the qualified columns (``name.column``) from table LEFT JOIN each join.

    joins: tables (optionally aliased, optionally filtered by constants) joined on column
    equality. unpivot: read a wide table as one row per non-empty cell of its listed
    columns, as a UNION ALL derived table named like the table, with the cell's column name
    and value in two added columns. since: (column, kind, last value) pulls only rows past a
    watermark, in watermark order: ``>=`` for an update timestamp (the last instant may hold
    more rows), ``>`` for a key.
    """

    def missing_table(name: str) -> ConfigError:
        return ConfigError(where_file, where_line, name, f"table {name!r} does not exist in the source", "a table of the source database")

    try:
        base_table = schema.table(table)
    except sa.exc.NoSuchTableError:
        raise missing_table(table) from None
    sources: dict[str, sa.FromClause] = {table: _unpivoted(base_table, unpivot, where_file, where_line) if unpivot else base_table}

    def resolve(qualified: str) -> sa.ColumnElement:
        name, cname = qualified.split(".", 1)
        src = sources.get(name)
        if src is None:
            raise ConfigError(where_file, where_line, qualified, f"{name!r} is neither the block's table nor a join", f"one of {', '.join(sources)}")
        if cname not in src.c:
            raise ConfigError(where_file, where_line, qualified, f"column {cname!r} does not exist in {name!r}", f"one of {', '.join(src.c.keys())}")
        return src.c[cname]

    from_clause: sa.FromClause = sources[table]
    for j in joins:
        try:
            jt = schema.table(j.table)
        except sa.exc.NoSuchTableError:
            raise missing_table(j.table) from None
        sources[j.name] = jt.alias(j.alias) if j.alias else jt
        conds = [resolve(left) == resolve(f"{j.name}.{right}") for left, right in j.on]
        conds += [resolve(f"{j.name}.{col}") == value for col, value in j.where]
        from_clause = from_clause.outerjoin(sources[j.name], sa.and_(*conds))
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


def _unpivoted(table: sa.Table, unpivot: Unpivot, where_file: str, where_line: int) -> sa.FromClause:
    """The wide table as rows of (other columns..., item, value), one per non-empty cell."""
    for c in unpivot.columns:
        if c not in table.c:
            raise ConfigError(where_file, where_line, f"unpivot.columns.{c}", f"column {c!r} does not exist in table {table.name!r}", f"one of {', '.join(table.c.keys())}")
    keep = [c for c in table.c if c.name not in unpivot.columns]
    parts = [
        sa.select(*keep, sa.literal(c, sa.String(64)).label(unpivot.item), sa.cast(table.c[c], sa.String(255)).label(unpivot.value))
        .where(table.c[c].is_not(None))
        for c in unpivot.columns
    ]
    return sa.union_all(*parts).subquery(table.name)


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
