"""Running a compiled mapping block over a source: extract, map and validate, batch by batch.

Used by the pipeline (which then de-identifies and publishes) and by anything that needs
to see what a mapping makes of a source without publishing (golden tests, feed checks).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from hub.fhir.check import Validator
from hub.mapping.compile import CompiledBlock, RowProblem
from hub.mapping.spec import Block
from hub.sources.sql import SourceSchema, build_select, iter_batches


@dataclass
class MappedRow:
    """One source row and what the mapping made of it: a valid resource, or problems."""

    row: tuple[Any, ...]
    resource: dict | None
    problems: list[RowProblem]
    failed_validation: bool = False


def block_select(compiled: CompiledBlock, schema: SourceSchema, since: object = None, incremental: bool = False,
                 window: tuple[dt.datetime, dt.datetime] | None = None) -> sa.Select:
    """The SELECT that feeds a compiled block: its columns, joins and key order.

    With incremental and a watermark on the block, only rows past ``since`` (all rows when
    since is None), in watermark order. Rows the block's ``where`` excludes are never read.
    window: (start, end) reads only rows whose timestamp watermark column is in [start, end),
    in watermark order, whatever since says; an aware bound is taken in the mapping's time
    zone, a naive one as the source's local time. Raises ValueError for a block without a
    timestamp watermark (``has_time_column``).
    """
    block, mapping = compiled.block, compiled.mapping
    wm = (block.watermark.column, block.watermark.kind, since) if incremental and block.watermark else None
    span = None
    if window is not None:
        if not has_time_column(block):
            raise ValueError(f"{mapping.path.name}:{block.line}: block {block.table} has no timestamp watermark to window on")
        start, end = (b.astimezone(mapping.timezone).replace(tzinfo=None) if b.tzinfo else b for b in window)
        fmt = mapping.datetime_formats[0]
        span = (block.watermark.column, start, end, fmt if isinstance(fmt, str) else fmt.format)
    return build_select(
        schema, block.table, block.joins, compiled.columns, block.key,
        str(mapping.path), block.line, since=wm, unpivot=block.unpivot,
        query=block.query, where=block.where, occurrence=block.occurrence, window=span,
    )


def has_time_column(block: Block) -> bool:
    """Whether a windowed run can pull the block: its watermark is a time (kind timestamp)."""
    return block.watermark is not None and block.watermark.kind == "timestamp"


def mapped_batches(
    compiled: CompiledBlock, engine: sa.Engine, schema: SourceSchema, batch_size: int = 5000
) -> Iterator[list[MappedRow]]:
    """Map and validate every row of the block's source table, in batches of batch_size
    (every resource also by fhir.resources: these are checks and golden tests, not the hot path)."""
    select = block_select(compiled, schema)
    validator = Validator(oracle_every=1)
    for batch in iter_batches(engine, select, batch_size):
        yield [map_and_validate(compiled, row, validator) for row in batch]


#: Used when the caller brings no validator: fast checks, fhir.resources on every resource.
_THOROUGH = Validator(oracle_every=1)


def map_and_validate(compiled: CompiledBlock, row: tuple[Any, ...], validator: Validator | None = None) -> MappedRow:
    """Map one source row and validate the result against FHIR R4 (hub.fhir.check.Validator)."""
    resource, problems = compiled.map_row(row)
    if resource is None:
        return MappedRow(row, None, problems)
    invalid = (validator or _THOROUGH).problems(resource)
    if invalid:
        where = f"{compiled.mapping.path.name}:{compiled.block.line}"
        return MappedRow(row, None, [
            RowProblem(where, element, None, f"fails FHIR R4 validation ({msg})", "a value FHIR R4 accepts for this element", None)
            for element, msg in invalid
        ], failed_validation=True)
    return MappedRow(row, resource, [])
