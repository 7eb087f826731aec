"""Leak scan: finds identifiers in what is about to be published (or was, or in logs).

Finds resident ID numbers, mainland mobile and landline numbers (with the detector of
``hub.identifiers``) and the values of canary patients (synthetic identities planted in the
source data, listed in the workspace's ``canary.json``, which must never come out). Hits are
reported masked, so a scan report is itself safe to log.

The scan knows code systems. A ruleset may declare, in a top-level ``leak_scan:`` section,
code systems whose codes look like identifiers (11-digit NDC drug codes starting 13-19 are
shaped like mobile numbers)::

    leak_scan:
      exempt_code_systems:
        - system: http://hl7.org/fhir/sid/ndc
          patterns: [mobile]                # which detector kinds the exemption covers
          format: '^\\d{5}-?\\d{4}-?\\d{2}$'  # optional: the whole code must match this

A value is exempt only when it is the ``code`` of a Coding (a JSON object with ``system`` and
``code`` and no Quantity ``value``/``unit``) whose ``system`` is declared, only from the
kinds named, and only when it matches ``format`` if one is given. The same number in a
``valueString``, under another system, or in a Quantity is a hit. Canary values are never
exempt. Every exemption used is counted (per system and kind) and reported.

Scanning is per column and fast in the common case: the detector runs once over a column's
values joined. Only the rows a finding touches are scanned again on their own, and a
resource's JSON is parsed only then: declared codes are taken out and scanned against their
exemption, the rest is scanned as one text whose leaves are known, so each hit is located by
its element path (``Observation.note[0].text``), never shown by value.
"""

from __future__ import annotations

import bisect
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hub import identifiers
from hub.yamlio import ConfigError, LineDict, load_yaml

#: Detector kinds a code-system exemption may name. Canary values are never exemptable.
EXEMPTABLE = ("mobile", "landline", "resident-id")
#: Columns holding FHIR resource JSON, scanned structurally when the detector finds something.
JSON_COLUMNS = ("resource",)
#: Columns holding a primary code as ``system|code``.
TOKEN_COLUMNS = ("code",)


@dataclass(frozen=True)
class Hit:
    where: str  # file, or table/column, with the row's (pseudonymous) id when known
    kind: str  # resident-id | mobile | landline | canary
    masked: str
    path: str = ""  # FHIR element path of the leaf holding it, when located

    def __str__(self) -> str:
        at = f" at {self.path}" if self.path else ""
        return f"{self.where}: {self.kind} {self.masked}{at}"


class LeakBlocked(RuntimeError):
    """Raised instead of publishing rows that carry an identifier."""

    def __init__(self, hits: list[Hit]):
        self.hits = hits
        super().__init__(f"publication blocked: {len(hits)} identifier(s) found, e.g. {hits[0]}")


def mask(value: str) -> str:
    return value[:3] + "*" * max(0, len(value) - 5) + value[-2:] if len(value) > 5 else "*" * len(value)


def load_canaries(workspace: Path) -> frozenset[str]:
    path = Path(workspace) / "canary.json"
    if not path.exists():
        return frozenset()
    values = json.loads(path.read_text(encoding="utf-8")).get("values", [])
    return frozenset(v for v in values if isinstance(v, str) and len(v) >= 2)


# ---- the policy: code systems whose codes look like identifiers ---------------------------

@dataclass(frozen=True)
class Exemption:
    system: str
    kinds: frozenset[str]
    format: re.Pattern | None = None
    line: int = 0

    def covers(self, kind: str, code: str) -> bool:
        return kind in self.kinds and (self.format is None or self.format.fullmatch(code.strip()) is not None)


@dataclass(frozen=True)
class ScanPolicy:
    """The ``leak_scan`` section of a ruleset: code-system exemptions, by system URI."""

    exemptions: Mapping[str, Exemption] = field(default_factory=dict)
    source: str = ""  # file the policy came from, for reports

    def for_system(self, system: str | None) -> Exemption | None:
        return self.exemptions.get(system) if system else None

    def as_dict(self) -> dict:
        return {s: {"patterns": sorted(e.kinds), "format": e.format.pattern if e.format else None}
                for s, e in sorted(self.exemptions.items())}


NO_EXEMPTIONS = ScanPolicy()
_SECTION_KEYS = ("exempt_code_systems",)
_ENTRY_KEYS = ("system", "patterns", "format", "note")
_SYSTEM_RE = re.compile(r"^(?:https?://\S+|urn:(?:oid|uuid|[a-z0-9-]+):\S+)$")


def load_scan_policy(path: Path) -> ScanPolicy:
    """Read and validate the ``leak_scan:`` section of a ruleset file (absent: no exemptions).

    Errors are ConfigErrors naming file, line and field.
    """
    path = Path(path)
    doc = load_yaml(path)
    f = str(path)
    if not isinstance(doc, LineDict) or doc.get("leak_scan") is None:
        return ScanPolicy(source=f)
    section = doc["leak_scan"]
    if not isinstance(section, LineDict):
        raise ConfigError(f, doc.line_of("leak_scan"), "leak_scan", "is not a mapping", "leak_scan: {exempt_code_systems: [...]}")
    for key in section:
        if key not in _SECTION_KEYS:
            raise ConfigError(f, section.line_of(key), f"leak_scan.{key}", "is not a leak_scan setting", ", ".join(_SECTION_KEYS))
    entries = section.get("exempt_code_systems") or []
    if not isinstance(entries, list):
        raise ConfigError(f, section.line_of("exempt_code_systems"), "leak_scan.exempt_code_systems", "is not a list",
                          "a list of {system, patterns, format}")
    out: dict[str, Exemption] = {}
    for i, node in enumerate(entries):
        where = f"leak_scan.exempt_code_systems[{i}]"
        line = getattr(node, "line", section.line_of("exempt_code_systems"))
        if not isinstance(node, LineDict):
            raise ConfigError(f, line, where, "is not a mapping", "{system: <uri>, patterns: [mobile]}")
        for key in node:
            if key not in _ENTRY_KEYS:
                raise ConfigError(f, node.line_of(key), f"{where}.{key}", "is not a setting of an exemption", ", ".join(_ENTRY_KEYS))
        system = node.get("system")
        if not isinstance(system, str) or not _SYSTEM_RE.match(system):
            raise ConfigError(f, node.line_of("system"), f"{where}.system", f"{system!r} is not a code system URI",
                              "a URI such as http://hl7.org/fhir/sid/ndc or urn:oid:...")
        if system in out:
            raise ConfigError(f, node.line_of("system"), f"{where}.system", f"{system} is declared twice (first on line {out[system].line})",
                              "one entry per code system")
        kinds = node.get("patterns")
        if not isinstance(kinds, list) or not kinds or any(k not in EXEMPTABLE for k in kinds):
            raise ConfigError(f, node.line_of("patterns"), f"{where}.patterns", f"{kinds!r} names no exemptable pattern",
                              f"a non-empty list of {', '.join(EXEMPTABLE)} (canary values are never exempt)")
        fmt = node.get("format")
        pattern = None
        if fmt is not None:
            try:
                pattern = re.compile(str(fmt), re.ASCII)  # \d means 0-9 only: no full-width digits
            except re.error as exc:
                raise ConfigError(f, node.line_of("format"), f"{where}.format", f"is not a regular expression ({exc})",
                                  "a Python regular expression the whole code must match") from None
        out[system] = Exemption(system, frozenset(kinds), pattern, node.line)
    return ScanPolicy(out, f)


# ---- detection -------------------------------------------------------------------------

#: Joins a column's values for the one-pass scan: '.' is never a separator inside a number,
#: so digits at the end of one value and the start of the next do not make one number.
_JOIN = "\n.\n"


def _arrow_suspects(column: pa.ChunkedArray | pa.Array, known: identifiers.KnownValues) -> list[str]:
    """What identifiers.hex_suspects(distinct non-null values of column) gives, in Arrow: the distinct values
    in order of first appearance; of a column whose every value is lowercase hex of 16 characters or more
    only those holding 17 digits in a row or a form of a known value made of hex characters.
    (tests/test_leakscan_hex_columns.py holds the two to the same answer.)"""
    values = pc.drop_null(column)
    if len(values) and pc.all(pc.match_substring_regex(values, identifiers.HEX_VALUE_PATTERN)).as_py():
        # one RE2 alternation per group of forms (made of hex characters only: nothing in them is special
        # to RE2), small enough for RE2 to compile: tens of thousands of canaries make one pattern too large
        patterns = [identifiers.ID_DIGITS_PATTERN, *known.forms_of(identifiers.HEX_DIGITS)]
        keep = None
        for at in range(0, len(patterns), _FORMS_PER_PATTERN):
            found = pc.match_substring_regex(values, "|".join(patterns[at:at + _FORMS_PER_PATTERN]))
            keep = found if keep is None else pc.or_(keep, found)
        values = values.filter(keep)
    return pc.unique(values).to_pylist()


_FORMS_PER_PATTERN = 2_000  # RE2 refused one alternation of ~40,000 ID-number forms (a review)


def _rows_holding(values: list | pa.ChunkedArray | pa.Array, wanted: set[str]) -> list[tuple[int, str]]:
    """(row number, text) of the rows of a column whose value (as text) is in wanted, in row order."""
    if isinstance(values, pa.ChunkedArray | pa.Array):
        rows = pc.indices_nonzero(pc.fill_null(pc.is_in(values, value_set=pa.array(sorted(wanted), pa.string())), False))
        return list(zip(rows.to_pylist(), values.take(rows).to_pylist(), strict=True))
    return [(i, t) for i, v in enumerate(values) if v is not None and (t := v if isinstance(v, str) else str(v)) in wanted]


def _is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t) or pa.types.is_fixed_size_binary(t)


def _as_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A binary column as text: UTF-8 as it is; anything else decoded leniently (an invalid byte becomes U+FFFD,
    which parts no digits a reader would see joined)."""
    try:
        return column.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.chunked_array([pa.array([None if v is None else bytes(v).decode("utf-8", "replace") for v in column.to_pylist()],
                                          pa.string())])


def _value_at(values: list | pa.ChunkedArray | pa.Array, i: int):
    return values[i].as_py() if isinstance(values, pa.ChunkedArray | pa.Array) else values[i]


def known_values(canaries: Iterable[str]) -> identifiers.KnownValues:
    """Canary values compiled once for the detector (it also finds them spaced or full-width)."""
    values = tuple(sorted(set(canaries)))
    return identifiers.KnownValues(values) if values else identifiers.KnownValues()


def detect(text: str, known: identifiers.KnownValues) -> list[tuple[str, str, int, int]]:
    """(kind, normalised value, start, end in text) of every identifier and canary value in text."""
    return [("canary" if f.kind == "known" else f.kind, f.value, f.start, f.end)
            for f in identifiers.find_identifiers(text, known, document=True)]


@dataclass
class ScanResult:
    """Hits (blocking) and exemptions used (system, kind) -> count, of one or more scans."""

    hits: list[Hit] = field(default_factory=list)
    exempted: Counter = field(default_factory=Counter)
    rows: int = 0  # rows (or texts) scanned

    def add(self, other: ScanResult) -> ScanResult:
        self.hits += other.hits
        self.exempted.update(other.exempted)
        self.rows += other.rows
        return self

    def exemptions(self) -> dict[str, dict[str, int]]:
        """{system: {kind: values exempted}}: for run reports and `hub feeds check`."""
        out: dict[str, dict[str, int]] = {}
        for (system, kind), n in sorted(self.exempted.items()):
            out.setdefault(system, {})[kind] = n
        return out

    def raise_if_hits(self) -> None:
        if self.hits:
            raise LeakBlocked(self.hits)


class _Clean(ScanResult):
    """The result of one text scanned clean (Scanner.record), shared by every such text: no
    hits, no exemptions, one row; it refuses every change (add, attribute assignment, and its
    hits and exempted are immutable), so sharing it cannot carry a finding from one scan to another."""

    def __init__(self) -> None:
        object.__setattr__(self, "hits", ())
        object.__setattr__(self, "exempted", MappingProxyType({}))
        object.__setattr__(self, "rows", 1)

    def __setattr__(self, name: str, value: object) -> None:
        raise TypeError("CLEAN is shared by every clean scan: add it to a result of your own instead")

    def __delattr__(self, name: str) -> None:
        raise TypeError("CLEAN is shared by every clean scan: add it to a result of your own instead")

    def add(self, other: ScanResult) -> ScanResult:
        raise TypeError("CLEAN is shared by every clean scan: add it to a result of your own instead")


#: What Scanner.record returns for a clean text (read-only, shared).
CLEAN: ScanResult = _Clean()


def _digits(text: str) -> str:
    return re.sub(r"[^0-9]", "", unicodedata.normalize("NFKC", text))


class _Number(str):
    """A JSON number's digits as written (parse_float/parse_int), told apart from a string leaf."""


#: Detector kinds that count inside a JSON number. A result of 13800000000 IU/mL is a number,
#: not a phone; an 18-digit number with a valid check digit, birth date and division code is
#: an ID number smuggled into a numeric field.
NUMBER_KINDS = frozenset({"resident-id", "canary"})


def _dump_with_paths(doc: dict, root: str) -> tuple[str, list[tuple[int, int, str]]]:
    """Compact JSON of doc and the (start, end, element path) of every leaf in it (numbers' paths end in '#')."""
    chunks: list[str] = []
    spans: list[tuple[int, int, str]] = []
    pos = 0

    def put(piece: str) -> None:
        nonlocal pos
        chunks.append(piece)
        pos += len(piece)

    def emit(node: object, path: str) -> None:
        if isinstance(node, dict):
            put("{")
            for i, (k, v) in enumerate(node.items()):
                put(("," if i else "") + json.dumps(str(k), ensure_ascii=False) + ":")
                emit(v, f"{path}.{k}")
            put("}")
        elif isinstance(node, list):
            put("[")
            for i, v in enumerate(node):
                if i:
                    put(",")
                emit(v, f"{path}[{i}]")
            put("]")
        elif isinstance(node, _Number):
            start = pos
            put(str(node))
            spans.append((start, pos, path + "#"))
        elif isinstance(node, str):
            start = pos
            put(json.dumps(node, ensure_ascii=False))
            spans.append((start, pos, path))
        else:
            put(json.dumps(node))

    emit(doc, root)
    return "".join(chunks), spans


def _take_codes(node: object, path: str, policy: ScanPolicy, out: list) -> None:
    """Move the code of every Coding under a declared system out of node (into out) for a separate scan."""
    if isinstance(node, dict):
        system, code = node.get("system"), node.get("code")
        if isinstance(code, str) and not ({"value", "unit", "comparator"} & node.keys()):  # a Coding, not a Quantity
            exemption = policy.for_system(system)
            if exemption is not None:
                out.append((f"{path}.code", exemption, code))
                node["code"] = ""
        for k, v in node.items():
            _take_codes(v, f"{path}.{k}", policy, out)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _take_codes(v, f"{path}[{i}]", policy, out)


class Scanner:
    """The leak scan with its canaries and code-system policy; every sink and check uses one."""

    def __init__(self, canaries: frozenset[str] = frozenset(), policy: ScanPolicy = NO_EXEMPTIONS):
        self.canaries, self.policy = frozenset(canaries), policy
        self._sorted_canaries = tuple(sorted(self.canaries))  # with_canaries and record, per resource: sorted once
        self.known = known_values(self.canaries)
        # a canary number is never exempt, even where it overlaps a finding an exemption covers
        self._canary_numbers = frozenset(d for d in (_digits(c) for c in self.canaries) if len(d) >= 6)

    # -- single values ---------------------------------------------------------------------

    def text(self, text: str, where: str) -> ScanResult:
        """Plain text (logs, Markdown): every finding is a hit."""
        return ScanResult([Hit(where, k, mask(v)) for k, v, _, _ in detect(text, self.known)], rows=1)

    def code(self, system: str | None, code: str, where: str, path: str = "") -> ScanResult:
        """A code under a code system: exempt where the policy says so."""
        result = ScanResult(rows=1)
        exemption = self.policy.for_system(system)
        for kind, value, _, _ in detect(code, self.known):
            if exemption is not None and exemption.covers(kind, code):
                if any(n in _digits(code) for n in self._canary_numbers):
                    result.hits.append(Hit(where, "canary", mask(value), path))
                else:
                    result.exempted[(exemption.system, kind)] += 1
            else:
                result.hits.append(Hit(where, kind, mask(value), path))
        return result

    def resource(self, text: str, where: str, known: identifiers.KnownValues | tuple[str, ...] | None = None) -> ScanResult:
        """One FHIR resource's JSON, structurally: declared codes apart, every other leaf scanned.

        known: the values of the resource's own source record (with the canaries), when the
        caller has them (the pipeline's workers do); a finding of one is a "known" hit.
        Inside a JSON number only an ID number (or a canary) counts: see NUMBER_KINDS.
        """
        try:
            doc = json.loads(text, parse_float=_Number, parse_int=_Number)  # numbers keep their digits as written
        except ValueError:
            return self.text(text, where)
        if not isinstance(doc, dict):
            return self.text(text, where)
        root = str(doc.get("resourceType", "$"))
        codes: list[tuple[str, Exemption, str]] = []
        _take_codes(doc, root, self.policy, codes)
        result = ScanResult(rows=1)
        text, leaves = _dump_with_paths(doc, root)
        starts = [a for a, _, _ in leaves]
        for kind, value, start, _ in detect(text, known if known is not None else self.known):
            i = bisect.bisect_right(starts, start) - 1
            path = leaves[i][2] if i >= 0 and leaves[i][0] <= start < leaves[i][1] else ""
            if path.endswith("#"):
                if kind not in NUMBER_KINDS:
                    result.exempted[("(a number)", kind)] += 1
                    continue
                path = path[:-1]
            result.hits.append(Hit(where, kind, mask(value), path))
        for path, exemption, code in codes:
            r = self.code(exemption.system, code, where, path)
            result.hits += r.hits
            result.exempted.update(r.exempted)
        return result

    def with_canaries(self, known: tuple[str, ...]) -> tuple[str, ...]:
        """A record's known values plus the canaries: one tuple, so the scrubber and record()
        share the detector's compiled form of it (cached per tuple)."""
        return tuple(dict.fromkeys((*known, *self._sorted_canaries))) if self._sorted_canaries else known

    def record(self, text: str, known: tuple[str, ...], where: str) -> ScanResult:
        """A resource about to be published from one source record, with that record's known
        values (and the canaries: see with_canaries): the quick pass over its JSON, and the
        structural pass only when the quick one finds something. The pipeline's workers
        quarantine a row with any hit, so one bad row never blocks a publication.

        A clean text gets CLEAN, one shared result that refuses every change (no allocation
        per resource): read its hits and exempted, never add to it."""
        known = known or self._sorted_canaries
        if not identifiers.find_identifiers(text, known, document=True):
            return CLEAN
        return self.resource(text, where, known)

    def token(self, token: str, where: str) -> ScanResult:
        """A ``system|code`` value."""
        system, sep, code = token.partition("|")
        return self.code(system, code, where) if sep else self.text(token, where)

    # -- tables ----------------------------------------------------------------------------

    def columns(self, columns: Mapping[str, list | pa.ChunkedArray], where: str, *, ids: list | pa.ChunkedArray | None = None,
                json_columns: Iterable[str] = JSON_COLUMNS, token_columns: Iterable[str] = TOKEN_COLUMNS,
                code_columns: Mapping[str, str] | None = None) -> ScanResult:
        """Columns of values ({name: [value, ...]}, or string Arrow columns); None values are skipped.

        json_columns hold FHIR resource JSON, token_columns ``system|code``, code_columns
        ({name: system}) bare codes of one system; anything else is plain text.
        """
        json_columns, token_columns, code_columns = set(json_columns), set(token_columns), dict(code_columns or {})
        result = ScanResult()
        for name, values in columns.items():
            # each distinct value is scanned once (a run id, an institution, a patient's pseudonym
            # repeat on many rows); the values are apart in the joined text, so what is found in one
            # does not depend on its neighbours, and every row holding a touched value is scanned again
            if isinstance(values, pa.ChunkedArray | pa.Array):
                distinct = _arrow_suspects(values, self.known)
            else:
                distinct = self._suspects(list(dict.fromkeys(v if isinstance(v, str) else str(v) for v in values if v is not None)))
            starts, pos = [], 0
            for t in distinct:
                starts.append(pos)
                pos += len(t) + len(_JOIN)
            joined = _JOIN.join(distinct)
            # the values a finding touches; a JSON escape could hide digits from the text scan: decode those rows too.
            # Resources are judged on their distinct pieces first (identifiers.pieces_clean): the whole text only if they hold a finding
            clean = name in json_columns and identifiers.pieces_clean(distinct, _JOIN, self.known)
            spans = [] if clean else [(a, b) for _, _, a, b in detect(joined, self.known)]
            if name in json_columns and "\\u" in joined:
                spans += [(m.start(), m.end()) for m in re.finditer(r"\\u", joined)]
            hit_values = {distinct[k] for a, b in spans
                          for k in range(bisect.bisect_right(starts, a) - 1, bisect.bisect_right(starts, b - 1))}
            for i, text in _rows_holding(values, hit_values) if hit_values else ():
                at = f"{where}.{name}" + (f"[id={rid}]" if ids is not None and (rid := _value_at(ids, i)) is not None else f"[row {i}]")
                if name in json_columns:
                    result.add(self.resource(text, at))
                elif name in token_columns:
                    result.add(self.token(text, at))
                elif name in code_columns:
                    result.add(self.code(code_columns[name], text, at))
                else:
                    result.add(self.text(text, at))
        result.rows = max((len(v) for v in columns.values()), default=0)
        return result

    def _suspects(self, distinct: list[str]) -> list[str]:
        """The distinct values of a column detection must see: all, but for a column of lowercase hex
        (five of every published row) only those that can hold a finding (identifiers.hex_suspects)."""
        return identifiers.hex_suspects(distinct, self.known)

    def arrow(self, table: pa.Table, where: str, **kw) -> ScanResult:
        """Every string and numeric column of an Arrow table (see columns() for the options). The
        columns stay in Arrow: their distinct values, and the hex values that can hold a finding,
        are found there (_arrow_suspects); only those become Python strings."""
        cols: dict[str, pa.ChunkedArray] = {}
        for name in table.column_names:
            column = table.column(name)
            if pa.types.is_dictionary(column.type):  # a file may store a column dictionary-encoded: its values are scanned
                column = column.cast(column.type.value_type)
            if pa.types.is_string_view(column.type):
                column = column.cast(pa.string())
            elif _is_binary(column.type):  # text stored as bytes (a rewritten file): read as a reader decoding it would show it
                column = _as_text(column)
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                cols[name] = column
            elif pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_decimal(column.type):
                cols[name] = pc.cast(column, pa.string())
        ids = cols.get("id")
        return self.columns(cols, where, ids=ids, **kw)

    def rows(self, rows: list[dict], where: str, **kw) -> ScanResult:
        """Row dicts (e.g. for a SQL store): strings and numbers are scanned, other values skipped."""
        names = list(dict.fromkeys(k for r in rows for k in r))
        cols = {n: [v if isinstance(v, str | int | float) and not isinstance(v, bool) else None for v in (r.get(n) for r in rows)]
                for n in names}
        ids = [r.get("id") for r in rows] if "id" in names else None
        return self.columns(cols, where, ids=ids, **kw)

    def files(self, paths: Iterable[Path], **kw) -> ScanResult:
        """Parquet files by their decoded values (compression hides bytes); anything else as text."""
        result = ScanResult()
        for path in paths:
            path = Path(path)
            if path.suffix == ".parquet":
                result.add(self.arrow(pq.read_table(path), str(path), **kw))
            else:
                result.add(self.text(path.read_bytes().decode("utf-8", errors="ignore"), str(path)))
        return result


# ---- the former function API (kept for callers that scan without a policy) --------------

def scan_text(text: str, where: str, canaries: frozenset[str] = frozenset()) -> list[Hit]:
    return Scanner(canaries).text(text, where).hits


def scan_files(paths: list[Path], canaries: frozenset[str] = frozenset(), policy: ScanPolicy = NO_EXEMPTIONS) -> list[Hit]:
    return Scanner(canaries, policy).files(paths).hits


def _local_path(file_path: str) -> Path:
    from urllib.parse import urlparse

    uri = urlparse(file_path)
    return Path(uri.path) if uri.scheme in ("file", "") else Path(file_path)


def run_files(table, run_id: str) -> list[Path]:
    """The Parquet data files one run added to an Iceberg table (its snapshots carry hub.run-id),
    whatever was committed after it: what a run's check must scan, and no more. Position delete files
    (paths and row numbers of hub's own files) hold no published value and are not listed."""
    from pyiceberg.manifest import DataFileContent, ManifestEntryStatus

    files: list[Path] = []
    for snap in table.metadata.snapshots:
        if (snap.summary.additional_properties if snap.summary else {}).get("hub.run-id") != run_id:
            continue
        for manifest in snap.manifests(table.io):
            if manifest.added_snapshot_id != snap.snapshot_id:
                continue
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                if entry.status == ManifestEntryStatus.ADDED and entry.data_file.content == DataFileContent.DATA:
                    files.append(_local_path(entry.data_file.file_path))
    return files
