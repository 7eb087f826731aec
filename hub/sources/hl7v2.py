"""HL7 v2 source: a folder of message files per feed, mapped with the declarative mapping language.

Library: **python-hl7** (PyPI ``hl7``) parses each message into segments, fields,
repetitions, components and sub-components, reads the separators from MSH-1/MSH-2, decodes
escape sequences (``Message.unescape``) and builds ACKs (``Message.create_ack``). It was
chosen over ``hl7apy`` because it needs no message-structure definition: hl7apy builds a
message against the standard's structures for its declared version (and, validating,
refuses deviations), while senders' messages carry Z segments, local fields and structure
deviations that must still be read, or quarantined one message at a time, never refused
wholesale. python-hl7 also brings the asyncio MLLP streams the listener uses. Group
structure is not needed: a row's context comes from segment order (``_context``).

What this module does by itself is framing and character sets, which the library leaves
to the caller:

- **Files**: a feed's ``path`` is a folder; every regular file not starting with ``.`` is
  read, in name order. A file holds one or many messages, with ``\\r``, ``\\n`` or
  ``\\r\\n`` segment ends, MLLP-framed (0x0b ... 0x1c 0x0d) or not; an MLLP frame not yet
  closed at the end of a file is left for the next run. A UTF-8 byte order mark is dropped.
  Messages the MLLP listener (hub.sources.mllp) received are read after the dropped files,
  from ``mllp/*.hl7.sealed``, opened with the master key (hub.sources.sealed).
- **Character sets**: MSH-18 (first repetition) is read from the MSH segment's bytes
  (ASCII up to there) and the message decoded with it: ``UNICODE UTF-8``, ``GB 18030-2000``
  / ``GB18030``, ``8859/1`` ... (``CHARSETS``); when MSH-18 is empty the feed's
  ``encoding:`` (region.yaml) is used, UTF-8 when it sets none. ``\\Xhh..\\`` escapes are
  bytes in that character set.

Mapping: a message is flattened into rows, one per *row segment* that a mapping block
names in ``from:`` (``from: OBX`` gives one row per OBX, ``from: PID`` one per PID). The
block's columns are segment-field paths spelled as column names (the mapping language's
columns are identifiers): ``PID_3_1`` is PID-3.1, ``PID_3r2_1`` PID-3[2].1, ``PID_5_1_1``
PID-5.1.1, ``OBX_5`` the first component of OBX-5; ``_all`` at the end joins every
repetition (and every attached segment, below) with a new line, for text fields and notes.
A column of another segment type takes that segment from the row segment's context:

- attached segments (``ATTACHED``: NTE, PRT, TQ1, ...) are those directly after the row
  segment, before the next segment that is not attached (an OBX's NTEs are its notes);
- other segments are placed by their nesting (``RANK``: MSH, PID/PV1, ORC, OBR, SPM, OBX):
  a segment that encloses the row's (the OBR and PID of an OBX) is the nearest one above
  within its group, or the first below before the group ends (an ORU's SPM, which follows
  its OBXs); a segment of the row's own group or below (the PV1 of a PID, the SPM of an
  OBR) is the first one below before the next segment of the row's level or above.

Extra columns: ``SEG_INDEX`` (the row segment's 1-based position in the message),
``MSG_TYPE`` (MSH-9.1^MSH-9.2). A block's ``where:`` is evaluated on the same columns, so
``where: {MSH_9_1: ORU}`` keeps a block to result messages. Rows then go through
``InstitutionRun.publish`` exactly like SQL rows: compiled mapping, terminology, date
formats, validation, de-identification, quarantine and lineage. A block's rows are handed
over oldest message first (its watermark, MSH-7 in the default mappings), so the newest
version of a resource stands within a run as across runs. Default mappings:
``mappings/hl7v2_*.yaml``.

Counting and quarantine: a message that cannot be read (no MSH, an unknown or wrong
character set, a broken segment) or that no block of the feed reads (an unsupported
message type) is quarantined whole, encrypted, with a reason naming file, message number
and what was wrong; rows of readable messages are published or quarantined by the
mapping. Messages read = messages mapped + messages quarantined, per file, in the run
report's ``sources``.

Position: per file, the messages and bytes read, kept in the NDJSON source's position
table (hub.sources.ndjson: ``plan_file``, ``advance``) and advanced only after the run's
commit, so a crash between publishing and advancing re-reads those messages and the upsert
by resource id makes that harmless. Lineage: ``hub_ndjson_lines`` records file and message
number for every published resource (``message_of``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hl7
import sqlalchemy as sa

from hub import quarantine
from hub.errors import CommandFailed
from hub.fhir.ids import resource_id, source_key_hash
from hub.lineage.schema import lines
from hub.mapping.spec import INSTITUTION, ColumnRef, Condition, Mapping, load_mapping
from hub.mapping.values import ValueProblem, parse_datetime
from hub.runreport import BlockCount
from hub.sources.hl7charset import CHARSETS
from hub.sources.ndjson import (
    Advance,
    Position,
    SourceFile,
    _ensure_tables,
    _prefix,
    line_of,
    plan_file,
)
from hub.sources.sealed import FOLDER, SUFFIX, SealedError, unseal

if TYPE_CHECKING:
    from hub.mapping.spec import Block
    from hub.region import Feed

MLLP_START, MLLP_END = b"\x0b", b"\x1c\r"
BOM = b"\xef\xbb\xbf"
#: Segments that belong to the segment they follow (notes, participations, timing ...).
ATTACHED = frozenset({"NTE", "PRT", "ROL", "TQ1", "TQ2", "CTD", "TCD", "SAC", "INV", "ARV", "CTI"})
#: Nesting of the segments that open a group: a message's context is read along it (``_context``).
RANK = {"MSH": 0, "EVN": 1, "PID": 1, "PD1": 2, "NK1": 2, "PV1": 2, "PV2": 2, "ORC": 3, "OBR": 4, "SPM": 5, "OBX": 6}
#: Resources published first, so references to them resolve (as in hub.pipeline).
RESOURCE_ORDER = ("Organization", "Patient", "Encounter", "ServiceRequest", "Specimen")
_COLUMN = re.compile(r"^(?P<seg>[A-Z][A-Z0-9]{2})_(?P<field>\d+)(?:r(?P<rep>\d+))?(?:_(?P<comp>\d+)(?:_(?P<sub>\d+))?)?(?P<all>_all)?$")
_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_HEX_ESCAPE = r"X((?:[0-9A-Fa-f]{2})+)"
MESSAGE = "MessageHeader"  # resource type under which whole messages are counted and quarantined


class Hl7SourceError(CommandFailed):
    """A feed's folder or mapping cannot be used (named by path)."""


class MessageProblem(Exception):
    """Why one message cannot be read: problem and what was expected (no message content)."""

    def __init__(self, problem: str, expected: str):
        super().__init__(problem)
        self.problem, self.expected = problem, expected


# ---- framing -------------------------------------------------------------------------------

@dataclass(frozen=True)
class RawMessage:
    number: int  # 1-based, in the file
    offset: int  # byte offset of its first byte in the file
    end: int  # byte offset just past it (and past its framing)
    data: bytes


def split_messages(data: bytes, base: int = 0, first_number: int = 1) -> tuple[list[RawMessage], int]:
    """Messages of a file's bytes (from byte ``base`` of the file), and the bytes consumed.

    MLLP frames are taken whole (an unclosed frame at the end is not consumed); outside
    frames a message starts at a line beginning with MSH (FHS/BHS/FTS/BTS batch lines are
    skipped). Bytes that are not a message (text before the first MSH) become a message of
    their own, so they are quarantined rather than lost.
    """
    out: list[RawMessage] = []
    pos, n, number = 0, len(data), first_number
    while pos < n:
        if data[pos] in b"\r\n \t" or data.startswith(BOM, pos):
            pos += 3 if data.startswith(BOM, pos) else 1
            continue
        if data[pos] == MLLP_START[0]:
            end = data.find(b"\x1c", pos + 1)
            if end < 0:
                break  # a frame still being written
            stop = end + 2 if data[end + 1:end + 2] == b"\r" else end + 1
            out.append(RawMessage(number, base + pos, base + stop, data[pos + 1:end]))
            number += 1
            pos = stop
            continue
        stop = _next_header(data, pos)
        chunk = data[pos:stop]
        if not re.match(rb"(FHS|BHS|FTS|BTS)\W", chunk[:4]):
            out.append(RawMessage(number, base + pos, base + stop, chunk))
            number += 1
        elif b"\rMSH" in chunk.replace(b"\n", b"\r"):  # a batch header line followed by messages
            skip = chunk.replace(b"\n", b"\r").index(b"\rMSH") + 1
            stop = pos + skip
        pos = stop
    return out, pos


def _next_header(data: bytes, pos: int) -> int:
    """Where the message starting at pos ends: the next line starting MSH/FHS/BHS/FTS/BTS or an MLLP start."""
    m = re.compile(rb"[\r\n](?=MSH|FHS|BHS|FTS|BTS)|\x0b").search(data, pos + 3)
    return len(data) if m is None else (m.start() + (1 if data[m.start()] != 0x0B else 0))


# ---- decoding and parsing ------------------------------------------------------------------

def declared_charset(raw: bytes) -> str:
    """MSH-18's first repetition, read from the MSH segment's bytes (ASCII up to MSH-18)."""
    first = re.split(rb"[\r\n]", raw.lstrip(BOM), maxsplit=1)[0]
    if not first.startswith(b"MSH") or len(first) < 8:
        raise MessageProblem("does not start with an MSH segment", "a message starting MSH|^~\\&|")
    sep = first[3:4]
    fields = first.split(sep)
    if len(fields) < 18:
        return ""
    rep = fields[1][1:2] if len(fields[1]) > 1 else b"~"
    return fields[17].split(rep)[0].decode("latin-1").strip()


def codec_for(charset: str, default: str | None) -> str:
    """The Python codec of an MSH-18 value, or of the feed default when MSH-18 is empty."""
    name = charset.strip().upper()
    if not name:
        name = (default or "UNICODE UTF-8").strip()
        if name.upper() in CHARSETS:
            return CHARSETS[name.upper()]
        return name  # a Python codec name given as the feed default (checked by region.yaml loading)
    if name not in CHARSETS:
        raise MessageProblem(f"declares an unknown character set in MSH-18 ({charset[:20]!r})",
                             f"one of {', '.join(sorted(CHARSETS))} (HL7 table 0211)")
    return CHARSETS[name]


@dataclass
class Segment:
    type: str
    #: fields[n] is HL7 field n: repetitions -> components -> sub-components (decoded text)
    fields: list[list[list[list[str]]]]


@dataclass
class Message:
    segments: list[Segment]
    control_id: str
    message_type: str  # MSH-9.1^MSH-9.2
    codec: str


def decode(raw: bytes, default_encoding: str | None) -> tuple[str, str]:
    """The message's text with \\r segment ends, and its codec."""
    codec = codec_for(declared_charset(raw), default_encoding)
    try:
        text = raw.lstrip(BOM).decode(codec)
    except UnicodeDecodeError as exc:
        raise MessageProblem(f"is not valid {codec} text (byte {exc.start} of the message)",
                             "bytes in the character set MSH-18 declares (or the feed's encoding: when MSH-18 is empty)") from None
    except LookupError:
        raise MessageProblem(f"names a character set Python cannot decode ({codec})", "a known character set") from None
    return text.replace("\r\n", "\r").replace("\n", "\r").strip("\r"), codec


def parse_message(raw: bytes, default_encoding: str | None = None) -> Message:
    """Decode and parse one message with python-hl7; raises MessageProblem naming what is wrong."""
    text, codec = decode(raw, default_encoding)
    try:
        parsed = hl7.parse(text)
    except (hl7.ParseException, IndexError, ValueError) as exc:
        raise MessageProblem(f"cannot be parsed ({type(exc).__name__})", "an HL7 v2 message: MSH|^~\\&|... then segments") from None
    segments: list[Segment] = []
    for i, seg in enumerate(parsed, 1):
        sid = str(seg[0]).strip()
        if not _SEGMENT_ID.match(sid):
            raise MessageProblem(f"segment {i} has no segment id (it starts {sid[:3]!r})",
                                 "segments starting with a three-character id such as PID, OBR, OBX")
        fields: list[list[list[list[str]]]] = [[[[sid]]]]
        for n in range(1, len(seg)):
            if sid == "MSH" and n <= 2:  # MSH-1 and MSH-2 are the separators themselves
                fields.append([[[str(seg[n])]]])
                continue
            fields.append([[[_unescape(parsed, sub, codec) for sub in _level(comp)] for comp in _level(rep)] for rep in seg[n]])
        segments.append(Segment(sid, fields))
    if not segments or segments[0].type != "MSH":
        raise MessageProblem("does not start with an MSH segment", "a message starting MSH|^~\\&|")
    msh = segments[0]
    mtype = _get(msh, 9, 1, 1, 1)
    if not mtype:
        raise MessageProblem("has no message type (MSH-9 is empty)", "MSH-9 such as ORU^R01, ADT^A08, OML^O21")
    return Message(segments, _get(msh, 10, 1, 1, 1), f"{mtype}^{_get(msh, 9, 1, 2, 1)}", codec)


def _level(node: Any) -> list:
    return [node] if isinstance(node, str) else list(node)


def _unescape(msg: hl7.Message, text: str, codec: str) -> str:
    """Escape sequences decoded by python-hl7; \\Xhh..\\ first, as bytes in the message's character set
    (python-hl7 reads each byte as a character, which garbles multi-byte text)."""
    esc = msg.esc
    if esc not in text:
        return text
    if f"{esc}X" in text:
        def hex_bytes(m: re.Match) -> str:
            try:
                decoded = bytes.fromhex(m.group(1)).decode(codec)
            except (UnicodeDecodeError, LookupError):
                return m.group(0)
            return decoded.replace(esc, f"{esc}E{esc}")
        text = re.sub(re.escape(esc) + _HEX_ESCAPE + re.escape(esc), hex_bytes, text)
    return msg.unescape(text)


def _get(seg: Segment, field_no: int, rep: int, comp: int, sub: int) -> str:
    try:
        return seg.fields[field_no][rep - 1][comp - 1][sub - 1]
    except IndexError:
        return ""


# ---- rows ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ColumnPath:
    segment: str
    field: int
    rep: int | None
    comp: int | None
    sub: int | None
    all: bool


def column_path(name: str) -> ColumnPath | None:
    """PID_3r2_1 -> PID-3[2].1; None for a name that is not a segment-field path."""
    m = _COLUMN.match(name)
    if m is None:
        return None
    num = lambda g: int(m.group(g)) if m.group(g) else None  # noqa: E731
    return ColumnPath(m.group("seg"), int(m.group("field")), num("rep"), num("comp"), num("sub"), bool(m.group("all")))


def _context(msg: Message, row_index: int, seg_type: str) -> list[Segment]:
    """The segments of seg_type a row segment (at row_index, 0-based) sees; see the module docstring."""
    segs, row = msg.segments, msg.segments[row_index]
    if seg_type == row.type:
        return [row]
    if seg_type in ATTACHED:
        out = []
        for s in segs[row_index + 1:]:
            if s.type not in ATTACHED:
                break
            if s.type == seg_type:
                out.append(s)
        return out
    want, mine = _rank(seg_type), _rank(row.type)
    if want < mine:  # an enclosing segment: the nearest one above, within the enclosing group
        for s in reversed(segs[:row_index]):
            if s.type == seg_type:
                return [s]
            if _rank(s.type) <= want:
                break
        limit = want  # or, in groups where it follows (an ORU's SPM after its OBXs), the first below
    else:
        limit = mine  # a segment of the row's own group: the first below, before the next group
    for s in segs[row_index + 1:]:
        if s.type == seg_type:
            return [s]
        if _rank(s.type) <= limit:
            break
    return []


def _rank(seg_type: str) -> int:
    return RANK.get(seg_type, len(RANK))


def _value(msg: Message, row_index: int, path: ColumnPath) -> str | None:
    found = _context(msg, row_index, path.segment)
    if not found:
        return None
    comp, sub = path.comp or 1, path.sub or 1
    if path.all:
        parts = []
        for seg in found:
            reps = seg.fields[path.field] if path.field < len(seg.fields) else []
            for r in range(1, len(reps) + 1):
                parts.append(_get(seg, path.field, r, comp, sub))
        text = "\n".join(p for p in parts if p)
        return text or None
    return _get(found[0], path.field, path.rep or 1, comp, sub) or None


def _special(msg: Message, row_index: int, name: str) -> Any:
    if name == "SEG_INDEX":
        return row_index + 1
    if name == "MSG_TYPE":
        return msg.message_type
    raise KeyError(name)


SPECIAL_COLUMNS = ("SEG_INDEX", "MSG_TYPE")


class Rows:
    """Turns messages into the rows of one compiled mapping block (columns in compiled order)."""

    def __init__(self, columns: Sequence[str], table: str, where: Sequence[Condition], where_file: str, block_line: int):
        self.table = table
        self.getters = [self._getter(c, where_file, block_line) for c in columns]
        self.where = [(self._getter(c.column, where_file, block_line), c.op,
                       self._getter(c.value.name, where_file, block_line) if isinstance(c.value, ColumnRef) else c.value)
                      for c in where]

    def _getter(self, column: str, file: str, line: int):
        name = column.split(".", 1)[1] if "." in column else column
        if name in SPECIAL_COLUMNS:
            return lambda msg, i: _special(msg, i, name)
        path = column_path(name)
        if path is None:
            from hub.yamlio import ConfigError

            raise ConfigError(file, line, name, "is not an HL7 v2 column",
                              "a segment-field path such as PID_3_1 (PID-3.1), PID_3r2_1 (PID-3[2].1), OBX_5_all, or SEG_INDEX, MSG_TYPE")
        return lambda msg, i: _value(msg, i, path)

    def rows(self, msg: Message) -> list[tuple]:
        out = []
        for i, seg in enumerate(msg.segments):
            if seg.type != self.table or not all(_holds(get(msg, i), op, ref(msg, i) if callable(ref) else ref)
                                                 for get, op, ref in self.where):
                continue
            out.append(tuple(g(msg, i) for g in self.getters))
        return out


def _holds(value: Any, op: str, ref: Any) -> bool:
    if op == "is_null":
        return (value is None) == bool(ref)
    if value is None:
        return op in ("ne", "not_in")
    text = str(value)
    if op == "eq":
        return text == str(ref)
    if op == "ne":
        return text != str(ref)
    if op == "in":
        return text in {str(r) for r in ref}
    if op == "not_in":
        return text not in {str(r) for r in ref}
    if ref is None:
        return False
    a, b = (float(text), float(ref)) if _numeric(text) and _numeric(str(ref)) else (text, str(ref))
    return {"lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b}[op]


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ---- files ---------------------------------------------------------------------------------

def discover(folder: Path) -> list[SourceFile]:
    """The feed's message files in name order (hidden files and sub-folders are not read), then the
    messages the MLLP listener stored (``mllp/*.hl7.sealed``, in arrival order)."""
    if not folder.is_dir():
        raise Hl7SourceError(f"{folder}: no such folder (the feed's path in region.yaml)")
    found = [SourceFile(p, p.name, None) for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
    if (folder / FOLDER).is_dir():
        found += [SourceFile(p, f"{FOLDER}/{p.name}", None) for p in sorted((folder / FOLDER).iterdir())
                  if p.is_file() and p.name.endswith(SUFFIX) and not p.name.startswith(".")]
    return found


def read_file(sf: SourceFile, start: Position | None, unseal: Callable[[Path], bytes] | None = None) -> tuple[list[RawMessage], int]:
    """The messages of a file after start, and the offset read up to. A sealed file (the listener's)
    is opened with unseal, which raises SealedError when it cannot be."""
    offset = start.offset if start else 0
    if sf.path.name.endswith(SUFFIX):
        if unseal is None:
            raise SealedError("is a sealed message and no key was given to open it", "a run or check with the master key")
        data = unseal(sf.path)[offset:]
    else:
        with sf.path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
    found, used = split_messages(data, offset, (start.line if start else 0) + 1)
    return found, offset + used


@dataclass
class Loaded:
    """A message read from a file: parsed, or the problem that stopped it."""

    file: str
    raw: RawMessage
    message: Message | None = None
    problem: MessageProblem | None = None
    rows: int = 0


def feed_blocks(feed: Feed) -> list[tuple[Mapping, int]]:
    """Every (mapping, block index) of an hl7v2 feed, patients and visits first."""
    out = []
    for path in feed.mappings or ((feed.mapping,) if feed.mapping else ()):
        mapping = load_mapping(path)
        out.extend((mapping, i) for i in range(len(mapping.blocks)))
    order = {r: i for i, r in enumerate(RESOURCE_ORDER)}
    out.sort(key=lambda mb: order.get(mb[0].blocks[mb[1]].resource, len(order)))
    return out


def message_key_hash(keys, institution: str, feed: str, file: str, raw: RawMessage) -> str:
    """Keyed hash naming a whole message in quarantine: feed, file, position and content."""
    digest = hashlib.sha256(raw.data).hexdigest()
    return source_key_hash(keys, institution, f"hl7v2:{feed}", file, [raw.number, raw.offset, digest])


# ---- publishing ----------------------------------------------------------------------------

@dataclass(frozen=True)
class MessageBlock:
    """One mapping block of an hl7v2 feed, as InstitutionRun.publish takes it (like hub.pipeline.BlockWork)."""

    feed: Feed
    mapping: Mapping
    index: int
    block: Block

    @property
    def block_id(self) -> str:
        return f"{self.block.resource}:{self.block.table}:{self.block.namespace}"


#: Messages parsed and mapped together: bounds memory on a backlog (blocks run in order per chunk,
#: so a chunk's patients are published before its results; earlier chunks' are known by then).
CHUNK_MESSAGES = 5000


def publish_feed(run, feed: Feed, *, full: bool = False, batch_rows: int = 2000, chunk: int | None = None) -> list[Advance]:
    """Stage every new message of an hl7v2 feed into run (an InstitutionRun); returns the positions
    to record with hub.sources.ndjson.advance() after run.commit(). full: read every file again."""
    _ensure_tables(run.engine)
    label = f"hl7v2:{feed.name}"
    info = run.report.sources.setdefault(feed.name, {"kind": "hl7v2", "files": {}})
    blocks = feed_blocks(feed)
    chunk = chunk or CHUNK_MESSAGES
    pending: list[Loaded] = []
    moves: list[Advance] = []

    def flush() -> None:
        _publish_messages(run, feed, label, blocks, pending, batch_rows, full)
        for m in pending:
            entry = info["files"][m.file]
            done = m.problem is None and m.rows > 0
            entry["mapped"] = entry.get("mapped", 0) + done
            entry["quarantined"] = entry.get("quarantined", 0) + (not done)
        pending.clear()

    for sf in discover(feed.path):
        start, state = plan_file(run.engine, run.inst.id, feed.name, sf, full)
        st = sf.path.stat()
        entry = info["files"].setdefault(sf.rel, {"state": state, "from_message": (start.line if start else 0) + 1})
        if state == "unchanged":
            continue
        entry.update(mapped=0, quarantined=0)
        try:
            found, offset = read_file(sf, start, lambda p: unseal(run.keys, run.inst.id, feed.name, p))
        except SealedError as e:  # quarantined, and read again next run (the position does not move)
            raw = RawMessage((start.line if start else 0) + 1, 0, st.st_size, sf.path.read_bytes())
            pending.append(Loaded(sf.rel, raw, problem=MessageProblem(e.problem, e.expected)))
            entry.update(to_message=raw.number, messages=1)
            continue
        for raw in found:
            item = Loaded(sf.rel, raw)
            try:
                item.message = parse_message(raw.data, feed.encoding)
            except MessageProblem as p:
                item.problem = p
            pending.append(item)
            if len(pending) >= chunk:
                flush()
        last = found[-1].number if found else (start.line if start else 0)
        entry.update(to_message=last, messages=len(found))
        moves.append(Advance(feed.name, sf.rel, Position(last, offset, st.st_size, st.st_mtime, _prefix(sf.path, st.st_size))))
    flush()
    return moves


def _publish_messages(run, feed: Feed, label: str, blocks: list[tuple[Mapping, int]], loaded: list[Loaded],
                      batch_rows: int, full: bool) -> None:
    """Map and stage the rows of loaded messages block by block; quarantine the messages no block read."""
    parsed = [m for m in loaded if m.message is not None]
    for mapping, index in blocks:
        block = mapping.blocks[index]
        compiled = run.pool.local.compiled(str(mapping.path), index)
        reader = Rows(compiled.columns, block.table, block.where, mapping.path.name, block.line)
        origin: list[tuple[str, int]] = []  # (file, message number) of each row, for lineage
        rows: list[tuple] = []
        for m in parsed:
            got = reader.rows(m.message)
            m.rows += len(got)
            rows.extend(got)
            origin.extend([(m.file, m.raw.number)] * len(got))
        if not rows:
            continue
        if block.watermark is not None:  # oldest message first: within a run too, the newest version stands
            order = _by_time(rows, compiled.columns.index(compiled.qualify(block.watermark.column)), mapping)
            rows, origin = [rows[i] for i in order], [origin[i] for i in order]
        work = MessageBlock(feed, mapping, index, block)
        run.progress.start(f"{run.inst.id} {feed.name} {block.table} → {block.resource}", len(rows))
        run.publish(work, (rows[i:i + batch_rows] for i in range(0, len(rows), batch_rows)), reuse_unchanged=not full)
        _record_lineage(run, feed, mapping, compiled, rows, origin)
    _quarantine_messages(run, feed, label, [m for m in loaded if m.problem is not None or m.rows == 0], blocks)


def _by_time(rows: list[tuple], index: int, mapping: Mapping) -> list[int]:
    """Row positions in the order of their message times (unreadable times keep their place, first)."""
    def when(i: int) -> dt.datetime:
        try:
            return dt.datetime.fromisoformat(parse_datetime(rows[i][index], mapping.datetime_formats, mapping.timezone))
        except (ValueProblem, ValueError, TypeError):
            return dt.datetime.min.replace(tzinfo=dt.UTC)
    return sorted(range(len(rows)), key=when)


def _quarantine_messages(run, feed: Feed, label: str, bad: list[Loaded], blocks: list[tuple[Mapping, int]]) -> None:
    """Whole messages that could not be read, or that no block reads, quarantined with a reason."""
    if not bad:
        return
    tables = sorted({m.blocks[i].table for m, i in blocks})
    counts: dict[str, BlockCount] = {}
    rejected = []
    for m in bad:
        if m.problem is None:
            m.problem = MessageProblem(
                f"is a {m.message.message_type} message, which no block of the feed's mappings reads",
                f"a message type and segments the mappings read (blocks read {', '.join(tables) or 'nothing'}; "
                "add a mapping for this message type, or stop the sender sending it)")
        count = counts.get(m.file)
        if count is None:
            count = counts[m.file] = BlockCount(feed.name, label, m.file, MESSAGE)
            run.report.counts.append(count)
        count.rows_read += 1
        count.quarantined += 1
        cause = f"{MESSAGE} (message): {m.problem.problem}"
        run.report.causes[cause] += 1
        rejected.append(quarantine.QuarantinedRow(
            feed=feed.name, mapping=label, source_table=m.file, resource_type=MESSAGE,
            source_key_hash=message_key_hash(run.keys, run.inst.id, feed.name, m.file, m.raw), cause=cause,
            reason=f"{m.file} message {m.raw.number} (bytes {m.raw.offset}-{m.raw.end}): {m.problem.problem}; expected {m.problem.expected}",
            row={"file": m.file, "message": m.raw.number, "offset": m.raw.offset, "end": m.raw.end,
                 "raw": m.raw.data.decode("latin-1")},  # latin-1 keeps every byte; re-encode to recover them
        ))
    quarantine.store(run.engine, run.keys, run.run_id, run.inst.id, rejected)


def _record_lineage(run, feed: Feed, mapping: Mapping, compiled, rows: list[tuple], origin: list[tuple[str, int]]) -> None:
    """File and message number of each resource version this block published in this run (rows
    quarantined, unchanged or older than the published version are not recorded)."""
    block = compiled.block
    idx = {c: compiled.columns.index(compiled.qualify(c)) for c in (*block.key, *block.id_key) if c != INSTITUTION}
    skhs = [source_key_hash(run.keys, run.inst.id, mapping.system, block.table, [row[idx[c]] for c in block.key]) for row in rows]
    held = run.writer(block.resource).holds(block.table, skhs)  # those with a published version
    out, seen = [], set()
    for row, (file, number), skh in zip(rows, origin, skhs, strict=True):
        if skh not in held or skh in seen:
            continue
        seen.add(skh)
        rid = resource_id(run.keys, run.inst.id, block.namespace,
                          [run.inst.id if c == INSTITUTION else row[idx[c]] for c in block.id_key])
        out.append({"run_id": run.run_id, "institution": run.inst.id, "feed": feed.name, "file": file, "line": number,
                    "resource_type": block.resource, "resource_id": rid, "line_hash": skh})
    if out:
        with run.engine.begin() as conn:
            conn.execute(lines.insert(), out)


def message_of(engine: sa.Engine, institution: str, resource_id_: str) -> dict | None:
    """The file and message number the latest published version of a resource came from
    (``line`` is the message number in the file; ``line_hash`` the row's source-key hash)."""
    return line_of(engine, institution, resource_id_)


def iter_files(feed: Feed, unseal: Callable[[Path], bytes] | None = None) -> Iterator[tuple[SourceFile, list[RawMessage]]]:
    """Every file of a feed with all its messages (for checks and tools; positions are not used).
    A sealed file that cannot be opened is given as one message of its sealed bytes."""
    for sf in discover(feed.path):
        try:
            yield sf, read_file(sf, None, unseal)[0]
        except SealedError:
            yield sf, [RawMessage(1, 0, sf.path.stat().st_size, sf.path.read_bytes())]
