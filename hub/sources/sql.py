"""Batched extraction from HIS/LIS databases through SQLAlchemy.

Rows are streamed in bounded batches (``yield_per``), never the whole table in memory.
The select names exactly the columns a mapping block uses, with left outer joins so that a
row whose lookup is missing still arrives (and is quarantined with a reason, not lost).
A block may read a validated read-only query instead of a table, filter rows with declared
conditions, and number the rows of a table without a primary key; all of it is done in SQL,
so joins, key order, watermarks and replay work the same for every source.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import sqlalchemy as sa

from hub.yamlio import ConfigError

if TYPE_CHECKING:
    from hub.mapping.spec import Block, Condition, Join, Occurrence, Unpivot


class SourceSchema:
    """Reflected tables of one source database, reflected once per table (and once per query)."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        self.metadata = sa.MetaData()
        self._queries: dict[tuple[str, str], sa.Subquery] = {}

    def table(self, name: str) -> sa.Table:
        if name not in self.metadata.tables:
            sa.Table(name, self.metadata, autoload_with=self.engine)
        return self.metadata.tables[name]

    def query(self, name: str, sql: str, where_file: str = "", where_line: int = 0) -> sa.Subquery:
        """A mapping's read-only SELECT as a derived table named name; its columns are found by
        running it once with a condition no row meets."""
        if (name, sql) not in self._queries:
            fld = f"from.query ({name})"
            try:
                with self.engine.connect() as conn:
                    names = list(conn.exec_driver_sql(f"SELECT * FROM ({sql}) hub_probe WHERE 1 = 0").keys())
            except sa.exc.DBAPIError as exc:
                first = str(exc.orig).splitlines()[0][:200] if exc.orig is not None else type(exc).__name__
                raise ConfigError(where_file, where_line, fld, f"the source database refused the query ({first})",
                                  "a SELECT the source database runs") from None
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ConfigError(where_file, where_line, fld, f"the query returns column {twice[0]!r} more than once",
                                  "distinct column names (SELECT r.id AS result_id, o.id AS order_id ...)")
            text = sa.text(sql.replace(":", "\\:"))  # a colon is SQL, never a bind parameter here
            self._queries[(name, sql)] = text.columns(*[sa.column(n) for n in names]).subquery(name)
        return self._queries[(name, sql)]


def block_source(schema: SourceSchema, block: Block, where_file: str = "", where_line: int = 0) -> sa.FromClause:
    """What a block reads before joins: its table or query, with its ``where`` conditions on its
    own columns (conditions on joined tables are left out). Used to count rows for progress and
    to count rows a watermark cannot see."""
    try:
        source = schema.query(block.table, block.query, where_file, where_line) if block.query else schema.table(block.table)
    except sa.exc.NoSuchTableError:
        raise ConfigError(where_file, where_line, block.table, f"table {block.table!r} does not exist in the source", "a table of the source database") from None
    own = [c for c in block.where if "." not in c.column and (not _is_ref(c.value) or "." not in c.value.name)]
    if not own:
        return source
    conds = [_condition(c, source.c[c.column], source.c[c.value.name] if _is_ref(c.value) else None)
             for c in own if c.column in source.c and (not _is_ref(c.value) or c.value.name in source.c)]
    return sa.select(source).where(*conds).subquery(block.table) if conds else source


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
    *,
    query: str | None = None,
    where: Sequence[Condition] = (),
    occurrence: Occurrence | None = None,
    window: tuple[str, dt.datetime, dt.datetime, str] | None = None,
) -> sa.Select:
    """SELECT the qualified columns (``name.column``) from table LEFT JOIN each join.

    joins: tables (optionally aliased, optionally filtered by constants) joined on column
    equality. unpivot: read a wide table as one row per non-empty cell of its listed
    columns, as a UNION ALL derived table named like the table, with the cell's column name
    and value in two added columns. since: (column, kind, last value) pulls only rows past a
    watermark, in watermark order: ``>=`` for an update timestamp (the last instant may hold
    more rows), ``>`` for a key. query: a read-only SELECT read instead of the table (named
    like it). occurrence: adds the row's number among the rows sharing the natural key (the
    key columns), in order_by order, counted over the whole table before any filter, and how
    many rows tie with it. where: conditions (ANDed) every row read must meet. window:
    (column, start, end, text format) reads only rows whose time column is in [start, end),
    in that column's order (see ``window_bound``; it replaces since).
    """

    def missing_table(name: str) -> ConfigError:
        return ConfigError(where_file, where_line, name, f"table {name!r} does not exist in the source", "a table of the source database")

    try:
        base_table = schema.query(table, query, where_file, where_line) if query else schema.table(table)
    except sa.exc.NoSuchTableError:
        raise missing_table(table) from None
    base: sa.FromClause = _unpivoted(base_table, unpivot, where_file, where_line) if unpivot else base_table
    if occurrence is not None:
        base = _numbered(base, table, [k for k in key if k != occurrence.name], occurrence, where_file, where_line)
    sources: dict[str, sa.FromClause] = {table: base}

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
    for cond in where:
        left = resolve(cond.column if "." in cond.column else f"{table}.{cond.column}")
        right = None
        if _is_ref(cond.value):
            right = resolve(cond.value.name if "." in cond.value.name else f"{table}.{cond.value.name}")
        select = select.where(_condition(cond, left, right))
    if window is not None:
        column, start, end, text_format = window
        wm = resolve(f"{table}.{column}")
        order = [wm, *order]
        select = select.where(wm >= window_bound(wm, start, text_format, where_file, where_line),
                              wm < window_bound(wm, end, text_format, where_file, where_line))
    elif since is not None:
        column, kind, last = since
        wm = resolve(f"{table}.{column}")
        order = [wm, *order]
        if last is not None:
            last = _as_column_type(wm, last)
            if kind == "key" and isinstance(last, str) and last.lstrip("-").isdigit():  # an untyped column (a query's)
                last = int(last)
            select = select.where(wm >= last if kind == "timestamp" else wm > last)
    return select.order_by(*order)


def _is_ref(value: object) -> bool:
    return hasattr(value, "name") and not isinstance(value, str)


def _condition(cond: Condition, column: sa.ColumnElement, other: sa.ColumnElement | None) -> sa.ColumnElement:
    """One where condition. A NULL is never equal to anything: ne and not_in keep NULL rows
    (they exclude only the values named), every other comparison drops them."""
    op, value = cond.op, other if other is not None else cond.value
    if op == "is_null":
        return column.is_(None) if value else column.is_not(None)
    if other is None:
        value = tuple(_coerced(column, v) for v in value) if isinstance(value, tuple) else _coerced(column, value)
    if op == "in":
        return column.in_(value)
    if op == "not_in":
        return sa.or_(column.is_(None), column.not_in(value))
    if op == "ne":
        return sa.or_(column.is_(None), column != value)
    return {"eq": column.__eq__, "lt": column.__lt__, "le": column.__le__, "gt": column.__gt__, "ge": column.__ge__}[op](value)


def _coerced(column: sa.ColumnElement, value: object) -> object:
    try:
        return _as_column_type(column, value)
    except (ValueError, TypeError):
        return value  # the database compares it as it can


def _numbered(source: sa.FromClause, name: str, natural: Sequence[str], occurrence: Occurrence, where_file: str, where_line: int) -> sa.FromClause:
    """source plus its occurrence number and tie count, as a derived table named like the table."""
    for c in [*natural, *occurrence.order_by]:
        if "." in c or c not in source.c:
            raise ConfigError(where_file, where_line, f"occurrence ({c})", f"column {c!r} is not a column of {name!r}",
                              f"one of {', '.join(source.c.keys())} (natural key and order_by are columns of the block's own table)")
    for produced in (occurrence.name, occurrence.ties):
        if produced in source.c:
            raise ConfigError(where_file, where_line, "occurrence.as", f"{name!r} already has a column {produced!r}", "occurrence: {as: <a new name>}")
    partition = [source.c[c] for c in natural]
    order = [source.c[c] for c in occurrence.order_by]
    number = sa.func.row_number().over(partition_by=partition or None, order_by=order).label(occurrence.name)
    ties = sa.func.count().over(partition_by=partition + order).label(occurrence.ties)
    return sa.select(*source.c, number, ties).subquery(name)


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
    if py is str and isinstance(value, dt.date | int | float) and not isinstance(value, bool):
        return value.isoformat() if isinstance(value, dt.date) else str(value)
    if py is dt.datetime:
        return dt.datetime.fromisoformat(str(value))
    if py is dt.date:
        return dt.date.fromisoformat(str(value))
    return value


_DIRECTIVE = re.compile(r"%.")
#: Text times compare like times only when their fields run from the year down, zero-padded.
_SORTABLE = ("%Y", "%m", "%d", "%H", "%M", "%S", "%f")


def window_bound(column: sa.ColumnElement, bound: dt.datetime, text_format: str, where_file: str = "",
                 where_line: int = 0) -> object:
    """A window bound (a naive local time of the source) as the time column compares it.

    A datetime column takes it as is; a date column the first date at or after it. A text
    column (the usual vendor case, and a query's untyped column) takes it written in
    text_format (the mapping's first datetime format), cut after the last field that is not
    zero: ``2024-03-05`` rather than ``2024-03-05 00:00:00``, so a value written without
    seconds (``2024-03-05 00:00``) still sorts at or after the start of its day. Raises
    ConfigError for a text format whose values do not sort like times (``%d/%m/%Y``).
    """
    try:
        py = column.type.python_type
    except NotImplementedError:
        py = str
    if py is dt.datetime:
        return bound
    if py is dt.date:
        return bound.date() if bound.time() == dt.time() else bound.date() + dt.timedelta(days=1)
    if py is not str:
        raise ConfigError(where_file, where_line, "watermark", f"column {column.name!r} holds {py.__name__} values, not times",
                          "a timestamp watermark on a date, datetime or text column for a windowed run")
    codes = _DIRECTIVE.findall(text_format)
    if tuple(codes) != _SORTABLE[: len(codes)] or not codes:
        raise ConfigError(where_file, where_line, "datetime_formats", f"text times in {text_format!r} do not sort like times, "
                          "so a windowed run cannot select a day of them", "a format from the year down, such as %Y-%m-%d %H:%M:%S")
    for m in _DIRECTIVE.finditer(text_format):
        prefix = text_format[: m.end()]
        text = bound.strftime(prefix)
        if dt.datetime.strptime(text, prefix) == bound:
            return text
    return bound.strftime(text_format)


def iter_batches(engine: sa.Engine, select: sa.Select, batch_size: int = 5000) -> Iterator[list[tuple]]:
    """Stream the select's rows as lists of tuples of at most batch_size rows."""
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=batch_size).execute(select)
        for part in result.partitions(batch_size):
            yield [tuple(r) for r in part]
