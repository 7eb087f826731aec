"""Row screening: source values no mapping can safely read, found before mapping.

A source can hand over bytes that are not text in its declared encoding (a cell written by
another client in GBK into a UTF-8 database), NUL characters, or strings far larger than any
FHIR element holds. One such cell must not abort a whole publish, and must not be published:
the row is quarantined with a reason naming the column and what was wrong (never the value),
and the run goes on.

SQLite hands undecodable text over with ``surrogateescape`` (see ``tolerant_engine``) so the
defect can be attributed to one row; servers (PostgreSQL, MariaDB) validate encodings on insert.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from hub.fhir.ids import source_key_hash
from hub.mapping.compile import RowProblem
from hub.mapping.values import ValueProblem, parse_datetime

if TYPE_CHECKING:
    from deid.keys import Keyring
    from hub.mapping.compile import CompiledBlock

#: FHIR R4 string: "no more than 1,048,576 characters" (1 MB).
MAX_STRING = 1024 * 1024


def tolerant_engine(url: str) -> sa.Engine:
    """An engine for a source database; on SQLite, text that is not UTF-8 arrives with
    surrogate escapes instead of aborting the fetch of a whole batch."""
    engine = sa.create_engine(url)
    if engine.dialect.name == "sqlite":
        @sa.event.listens_for(engine, "connect")
        def _text(dbapi_conn, _record):  # noqa: ANN001 - DBAPI connection
            dbapi_conn.text_factory = lambda b: b.decode("utf-8", "surrogateescape")
    return engine


def defect(row: Sequence[Any], columns: Sequence[str]) -> tuple[str, str, str] | None:
    """(column, problem, expected) for the first unreadable value of row, or None when it has none."""
    for column, value in zip(columns, row, strict=True):
        if type(value) is not str:
            continue
        if len(value) > MAX_STRING:
            return column, f"holds {len(value):,} characters", f"at most {MAX_STRING:,} characters (the FHIR string limit)"
        if "\x00" in value:
            return column, f"holds a NUL character (U+0000) at position {value.index(chr(0))}", "text without NUL characters"
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                byte = value[exc.start].encode("utf-8", "surrogateescape")
                return column, f"is not valid UTF-8 text (byte 0x{byte.hex()} at position {exc.start})", "text in the source's declared encoding (UTF-8)"
    return None


def storable(row: Sequence[Any]) -> list[Any]:
    """The row with undecodable text turned back into its raw bytes, so it can be sealed in quarantine."""
    out = []
    for value in row:
        if type(value) is str and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                value = value.encode("utf-8", "surrogateescape")
        out.append(value)
    return out


#: A watermark value later than now plus this is implausible: it would stop every later row from being read.
MAX_FUTURE = dt.timedelta(days=1)


class RowScreen:
    """Screens one block's source rows before mapping: unreadable cells, empty keys, poisoned watermarks.

    ``split(rows)`` returns the rows that go on and, for the others, (row, source-key hash,
    problem). A watermark value that cannot be parsed, or lies more than MAX_FUTURE ahead,
    is quarantined rather than published, so it never becomes the watermark: one bad
    ``updated_at`` must not hide every later row.
    """

    def __init__(self, compiled: CompiledBlock, keys: Keyring, institution: str, wm_index: int | None,
                 now: dt.datetime | None = None):
        self.compiled, self.keys, self.institution = compiled, keys, institution
        block, mapping = compiled.block, compiled.mapping
        self.where = f"{mapping.path.name}:{block.line}"
        self.columns = compiled.columns
        self.wm_index = wm_index if block.watermark is not None and block.watermark.kind == "timestamp" else None
        self.wm_column = block.watermark.column if block.watermark is not None else None
        self.latest = (now or dt.datetime.now(dt.UTC)) + MAX_FUTURE

    def split(self, rows: list[tuple]) -> tuple[list[tuple], list[tuple[tuple, str, RowProblem]]]:
        good: list[tuple] = []
        bad: list[tuple[tuple, str, RowProblem]] = []
        for row in rows:
            problem = self._problem(row)
            if problem is None:
                good.append(row)
            else:
                bad.append((row, self.key_hash(storable(row)), problem))  # undecodable text hashed as its bytes
        return good, bad

    def label(self, row: tuple) -> str:
        return self.compiled.row_label(storable(row))

    def key_hash(self, row: Sequence[Any]) -> str:
        """The row's keyed source-key hash (as the workers compute it)."""
        mapping, block = self.compiled.mapping, self.compiled.block
        return source_key_hash(self.keys, self.institution, mapping.system, block.table, self.compiled.source_key(row))


    def _problem(self, row: tuple) -> RowProblem | None:
        resource = self.compiled.block.resource
        found = defect(row, self.columns)
        if found is not None:
            column, problem, expected = found
            return RowProblem(self.where, f"{resource} (source row)", column, problem, expected, None)
        key = self.compiled.source_key(row)
        if any(v is None or (isinstance(v, str) and not v.strip()) for v in key):
            return RowProblem(self.where, f"{resource}.id", ", ".join(self.compiled.block.key), "the row's key is empty",
                              "a value in every key column (a row without a key cannot be told apart from others)", None)
        if self.wm_index is not None:
            value = row[self.wm_index]
            if value is not None:
                return self._watermark_problem(value)
        return None

    def _watermark_problem(self, value: object) -> RowProblem | None:
        mapping = self.compiled.mapping
        try:
            when = dt.datetime.fromisoformat(parse_datetime(value, mapping.datetime_formats, mapping.timezone))
        except (ValueProblem, ValueError) as exc:
            expected = exc.expected if isinstance(exc, ValueProblem) else " or ".join(map(str, mapping.datetime_formats))
            return RowProblem(self.where, f"{self.compiled.block.resource} (watermark)", self.wm_column,
                              "the update time is not a date-time in the configured formats", expected, None)
        if when.tzinfo is None:
            when = when.replace(tzinfo=mapping.timezone)
        if when > self.latest:
            return RowProblem(self.where, f"{self.compiled.block.resource} (watermark)", self.wm_column,
                              f"the update time is more than {MAX_FUTURE.days} day(s) in the future",
                              "a time no later than now (a future update time would stop every later row from being read)", None)
        return None
