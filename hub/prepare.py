"""The CPU-bound part of a run, per batch: map, validate, de-identify and serialise rows.

A Preparer turns a batch of source rows into publishable rows or rejections. It holds no
connection and no writer, so it runs the same in-process or in worker processes: large
runs fan batches out to a small process pool (one worker per core) through a bounded
window, so at most a few batches are in flight and memory stays bounded. The parent keeps
everything stateful: the patient index, the quarantine and the table writers.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import os
import re
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deid.engine import Deidentifier, UnknownModifierExtension, patient_pseudonym
from deid.keys import Keyring
from deid.ruleset import Ruleset
from hub.fhir.check import Validator
from hub.fhir.ids import source_key_hash
from hub.fhir.jsonio import content_hash, dump_bytes
from hub.lakehouse.tables import effective_time, parse_instant, primary_code
from hub.leakscan import Hit, Scanner, load_scan_policy
from hub.mapping.compile import CompiledBlock, RowProblem
from hub.mapping.run import map_and_validate
from hub.mapping.spec import Block, Mapping, load_mapping
from hub.mapping.values import ValueProblem, parse_datetime


@dataclass(frozen=True)
class Ready:
    """A de-identified resource ready to publish, with its key and lineage columns."""

    id: str
    data: bytes  # the resource's JSON in UTF-8, as published (bytes cross the pipe from a worker without encoding)
    hash: str
    code: str | None
    effective_time: dt.datetime | None
    patient_ref: str | None  # the Patient id this resource refers to
    pseudonym: str | None  # for a Patient: its own linkage pseudonym
    source_key_hash: str
    source_updated_at: dt.datetime | None = None  # from a timestamp watermark column: orders versions
    #: (element, line, value) of elements the mapping checks against the published birth date (not_before_birth: true)
    birth_times: tuple[tuple[str, int, str], ...] = ()
    #: text passed the publication's leak scan (Scanner.record) with the record's known values: the sink need not scan it again
    scanned: bool = False

    @property
    def text(self) -> str:
        """The resource's JSON."""
        return self.data.decode()


@dataclass(frozen=True)
class Rejected:
    """A row that could not become a valid resource, with every problem found."""

    problems: list[RowProblem]
    failed_validation: bool
    label: str
    source_key_hash: str


@dataclass(frozen=True)
class Task:
    """Rows of one block to prepare (PreparePool.map_tagged); tag comes back with the prepared batch."""

    tag: Any
    mapping_path: str
    block_index: int
    rows: list[tuple[Any, ...]]
    key_hashes: Sequence[str] | None = None


@dataclass(frozen=True)
class Mark:
    """A point in the stream of tasks, given back as (tag, None) in order: e.g. the end of a block.
    drain: every task before it is yielded before any item after it is read (the next block
    needs what the caller does with the ones before)."""

    tag: Any
    drain: bool = False


@dataclass
class PreparedBatch:
    rows: list[tuple[Any, ...]]
    items: list[Ready | Rejected]
    uncovered: Counter = field(default_factory=Counter)
    dropped_by_rule: Counter = field(default_factory=Counter)
    exempted: Counter = field(default_factory=Counter)  # leak-scan exemptions used by the scanned items, (system, kind) -> n


def _patient_ref(resource: dict) -> str | None:
    ref = (resource.get("subject") or resource.get("patient") or {}).get("reference", "")
    return ref[len("Patient/"):] if ref.startswith("Patient/") else None


class Preparer:
    """Prepares batches for one institution under one ruleset and key."""

    def __init__(self, institution: str, keys: Keyring, ruleset: Ruleset, scanner: Scanner | None = None, oracle_every: int = 100):
        """scanner: the leak scan each prepared resource must pass (the workspace's canaries and
        the ruleset's code-system exemptions); a row with a finding is quarantined, not published.
        oracle_every: every n-th resource is also validated by fhir.resources (hub.fhir.check)."""
        self.institution, self.keys = institution, keys
        self.validator = Validator(oracle_every)
        self.deid = Deidentifier(ruleset, keys)
        self.scanner = scanner or Scanner(frozenset(), load_scan_policy(ruleset.path))
        self._blocks: dict[tuple[str, int], CompiledBlock] = {}
        self._mappings: dict[str, Mapping] = {}

    def compiled(self, mapping_path: str, block_index: int, mapping: Mapping | None = None) -> CompiledBlock:
        """The compiled block; mapping: the mapping at mapping_path when the caller has loaded it
        already (the pipeline's feed_blocks), so it is not read and parsed again."""
        key = (mapping_path, block_index)
        if key not in self._blocks:
            if mapping_path not in self._mappings:
                self._mappings[mapping_path] = mapping if mapping is not None else load_mapping(Path(mapping_path))
            mapping = self._mappings[mapping_path]
            self._blocks[key] = CompiledBlock(mapping, mapping.blocks[block_index], self.institution, self.keys)
        return self._blocks[key]

    def known_values(self, compiled: CompiledBlock, resource: dict, row: tuple[Any, ...]) -> tuple[str, ...]:
        """What the source record knows that identifies its person: the mapped resource's values
        at identifying leaves and the row's identifying columns (phi lines and Patient keys,
        see CompiledBlock.known_values). Scrubbing removes them from kept strings."""
        values = [*self.deid.identifying_values(resource), *(v.strip() for v in compiled.known_values(row) if v.strip())]
        return tuple(dict.fromkeys(values))

    def prepare(self, mapping_path: str, block_index: int, rows: list[tuple[Any, ...]],
                key_hashes: Sequence[str] | None = None) -> PreparedBatch:
        """key_hashes: the rows' source-key hashes when the caller has them already (the
        pipeline's row screen computes them: RowScreen.key_hash, the same keyed hash of the same
        key), one per row; otherwise each is computed here."""
        compiled = self.compiled(mapping_path, block_index)
        mapping, block = compiled.mapping, compiled.block
        stats = self.deid.stats
        before_unc, before_drop = stats.uncovered.copy(), stats.dropped_by_rule.copy()
        items: list[Ready | Rejected] = []
        exempted: Counter = Counter()
        wm = block.watermark
        wm_index = compiled.columns.index(compiled.qualify(wm.column)) if wm is not None and wm.kind == "timestamp" else None
        if key_hashes is None:
            key_hashes = [source_key_hash(self.keys, self.institution, mapping.system, block.table, compiled.source_key(row))
                          for row in rows]
        elif len(key_hashes) != len(rows):
            raise ValueError(f"{len(key_hashes)} source-key hashes for {len(rows)} rows")
        for row, skh in zip(rows, key_hashes, strict=True):
            mapped = map_and_validate(compiled, row, self.validator)
            if mapped.resource is None:
                items.append(Rejected(mapped.problems, mapped.failed_validation, compiled.row_label(row), skh))
                continue
            known = self.scanner.with_canaries(self.known_values(compiled, mapped.resource, row))
            try:
                clean = self.deid.apply(mapped.resource, known_names=known)
            except UnknownModifierExtension as exc:
                items.append(Rejected([self._unknown_modifier(compiled, exc)], False, compiled.row_label(row), skh))
                continue
            data = dump_bytes(clean)
            text = data.decode()
            found = self.scanner.record(text, self._must_not_appear(compiled, known, row), block.table)
            if found.hits:  # an identifier survived de-identification (a code, a number): this row only waits
                items.append(Rejected([self._leak(compiled, hit) for hit in found.hits], False, compiled.row_label(row), skh))
                continue
            if found.exempted:
                exempted.update(found.exempted)
            is_patient = block.resource == "Patient"
            items.append(Ready(
                id=clean["id"], data=data, hash=content_hash(data), code=primary_code(clean),
                effective_time=effective_time(clean, mapping.timezone),
                patient_ref=None if is_patient else _patient_ref(clean),
                pseudonym=patient_pseudonym(clean) if is_patient else None, source_key_hash=skh,
                source_updated_at=_updated_at(row[wm_index], mapping) if wm_index is not None else None,
                birth_times=compiled.birth_times(clean) if compiled.birth_checked and not is_patient else (),
                scanned=True,
            ))
        return PreparedBatch(rows, items, stats.uncovered - before_unc, stats.dropped_by_rule - before_drop, exempted)

    @staticmethod
    def _must_not_appear(compiled: CompiledBlock, known: tuple[str, ...], row: tuple[Any, ...]) -> tuple[str, ...]:
        """The known values the leak scan looks for: all but the row's dates (usually the same tuple)."""
        if not compiled.dates_known:
            return known
        dates = set(compiled.known_values(row)) - set(compiled.identifier_values(row))
        return tuple(v for v in known if v not in dates) if dates else known

    def _leak(self, compiled: CompiledBlock, hit: Hit) -> RowProblem:
        """The problem of a row whose de-identified resource still holds an identifier (never shown)."""
        what = {"canary": "a value of the record's own identity (name, MRN, phone, address) or a canary",
                "resident-id": "a resident ID number", "mobile": "a mobile number", "landline": "a phone number"}.get(hit.kind, hit.kind)
        element = hit.path or compiled.block.resource
        return RowProblem(
            f"{compiled.mapping.path.name}:{compiled.block.line}", element, None,
            f"the leak scan finds {what} here after de-identification",
            "no identifier in published data: correct the source value, map the element from another column, "
            "or, for a code system whose codes look like identifiers, declare it under leak_scan: in "
            f"{self.deid.ruleset.path.name}", None,
        )

    def _unknown_modifier(self, compiled: CompiledBlock, exc: UnknownModifierExtension) -> RowProblem:
        """The problem of a row refused for a modifierExtension, located at the mapping line that writes it."""
        target = exc.path.partition(".")[2]
        line = next((el.line for el in compiled.block.elements
                     if re.sub(r"\[(\d+|x)\]", "", el.path).startswith(target)), compiled.block.line)
        return RowProblem(
            f"{compiled.mapping.path.name}:{line}", exc.path, None,
            f"has a modifierExtension hub's ruleset does not know: {exc.url}",
            f"no modifierExtension, or a rule for it in {self.deid.ruleset.path.name}", None,
        )


def _updated_at(value: Any, mapping: Mapping) -> dt.datetime | None:
    if value is None:
        return None
    try:
        return parse_instant(parse_datetime(value, mapping.datetime_formats, mapping.timezone))
    except ValueProblem:
        return None


# ---- worker processes ------------------------------------------------------------------

#: Rows per task sent to a worker: small enough that every block splits across the workers.
TASK_ROWS = 1000
#: Tasks in flight per worker. 4 was ~4 % faster than 2 at 8,000 people but held ~35 MiB more at the
#: flush (the peak): the results that come back meanwhile wait in the parent (docs/performance.md).
WINDOW_PER_WORKER = 2
_worker: Preparer | None = None


def _init_worker(institution: str, master: bytes, ruleset: Ruleset, scanner: Scanner | None, oracle_every: int) -> None:
    global _worker
    _worker = Preparer(institution, Keyring(master), ruleset, scanner, oracle_every)


def _prepare_in_worker(args: tuple[str, int, list[tuple[Any, ...]], Sequence[str] | None]) -> PreparedBatch:
    """A task's batch, without its rows: the parent has them (PreparePool.map_tagged puts them back), so they are not sent back."""
    assert _worker is not None
    batch = _worker.prepare(*args)
    batch.rows = []
    return batch


def _with_rows(rows: list[tuple[Any, ...]], pending) -> PreparedBatch:
    """A worker's batch with the rows it was prepared from (kept by the parent, never sent back)."""
    batch = pending.get()
    batch.rows = rows
    return batch


def default_workers() -> int:
    """One worker per core the process may use (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


#: Bytes a pipe between the parent and its workers holds (Linux's default is 64 KiB; at most /proc/sys/fs/pipe-max-size).
PIPE_BYTES = 1 << 20


def _widen_pipes(pool) -> None:
    """Let a worker hand over a whole prepared batch (~1 MB) and go on with its next task. Through a
    pipe of 64 KiB it waits, piece by piece, until the parent's result thread has read each, and
    that thread runs only when the parent's main thread lets it: measured, a worker spent ~8 % of
    its time sending. Where the size cannot be raised (not Linux, a lower limit), pipes stay as they are."""
    try:
        import fcntl

        setsize = fcntl.F_SETPIPE_SZ
        pipes = [pool._inqueue._reader.fileno(), pool._outqueue._reader.fileno()]
    except (ImportError, AttributeError, OSError):
        return
    for fd in pipes:
        try:
            fcntl.fcntl(fd, setsize, PIPE_BYTES)
        except OSError:
            pass


class PreparePool:
    """Runs a Preparer's batches in-process (workers <= 1) or in a process pool."""

    def __init__(self, institution: str, keys: Keyring, ruleset: Ruleset, workers: int, scanner: Scanner | None = None,
                 oracle_every: int = 100):
        self.local = Preparer(institution, keys, ruleset, scanner, oracle_every)
        self.workers = workers
        self._pool = None
        if workers > 1:
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
            self._pool = ctx.Pool(workers, initializer=_init_worker, initargs=(institution, keys.master, ruleset, self.local.scanner, oracle_every))
            _widen_pipes(self._pool)

    def scans_for(self, publication) -> bool:
        """Whether the items this pool marks scanned were scanned with the publication's own scanner."""
        return self.local.scanner is publication.scanner

    def map_tagged(self, items: Iterable[Task | Mark]) -> Iterator[tuple[Any, PreparedBatch | None]]:
        """(tag, prepared batch) for each Task and (tag, None) for each Mark, in the order of items.
        A Task's key_hashes (None: computed by the workers) are the ones the caller's row screen
        made, sent along so no row is hashed twice.

        With workers, a task's rows go out in pieces of TASK_ROWS, at most WINDOW_PER_WORKER per
        worker in flight: items are read ahead of what is yielded (a caller may be busy with what
        came before a Mark while the workers go on with what follows it), except past a Mark
        with drain, which is yielded before the item after it is read."""
        if self._pool is None:
            for item in items:
                if isinstance(item, Mark):
                    yield item.tag, None
                else:
                    yield item.tag, self.local.prepare(item.mapping_path, item.block_index, item.rows, item.key_hashes)
            return
        window: deque = deque()  # (tag, rows, pending result) in order; a Mark has no rows and no result
        limit, in_flight = WINDOW_PER_WORKER * self.workers, 0

        def head() -> tuple[Any, PreparedBatch | None]:
            nonlocal in_flight
            tag, rows, pending = window.popleft()
            if pending is None:
                return tag, None
            in_flight -= 1
            return tag, _with_rows(rows, pending)

        for item in items:
            if isinstance(item, Mark):
                window.append((item.tag, None, None))
                while item.drain and window:
                    yield head()
                continue
            rows, key_hashes = item.rows, item.key_hashes
            if key_hashes is not None and len(key_hashes) != len(rows):
                raise ValueError(f"{len(key_hashes)} source-key hashes for {len(rows)} rows")
            for i in range(0, len(rows), TASK_ROWS):
                chunk = rows[i : i + TASK_ROWS]
                task = (item.mapping_path, item.block_index, chunk, None if key_hashes is None else key_hashes[i : i + TASK_ROWS])
                window.append((item.tag, chunk, self._pool.apply_async(_prepare_in_worker, (task,))))
                in_flight += 1
                while in_flight >= limit:
                    yield head()
        while window:
            yield head()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None


def identity_conflict(known: tuple[str | None, dt.datetime | None] | None, item: Ready):
    """A problem maker when a Patient's source key already belongs to another person, else None.

    Same source key (MRN), different resident ID (so a different linkage pseudonym) or a
    different birth date: the source reused a key, and publishing would overwrite one
    person's record with another's. IT resolves it at the source; the row waits in quarantine.
    """
    if known is None:
        return None
    person, born = known
    what = []
    if person is not None and item.pseudonym is not None and person != item.pseudonym:
        what.append("resident ID number")
    if born is not None and item.effective_time is not None and born != item.effective_time:  # both aware: one instant
        what.append("birth date")
    if not what:
        return None

    def problem(file: str, block: Block) -> RowProblem:
        return RowProblem(
            f"{file}:{block.line}", "Patient.identifier", ", ".join(block.key),
            f"this source key is already published for a patient with a different {' and '.join(what)} (the key was reused for another person, or the identity was changed)",
            "one person per source key: correct the record at the source, then `hub quarantine replay`", None)
    return problem
