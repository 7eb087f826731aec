"""Chinese personal identifiers: find, validate and redact them in free text, however written.

Finds resident ID numbers (GB 11643-1999, 18 characters, and legacy 15-digit numbers), mainland
mobile numbers, landlines, and the known identifying values of one source record (names, ID
numbers, phones, MRNs, addresses), also when written to evade a plain pattern: full-width or
other-script digits, Chinese numerals, separators or invisible characters inside the number, a
letter prefix (``SFZ110101...``, ``tel138...``), ``+86``/``0086``, a name spelled ``张 三``.
Used to scrub strings during de-identification, to validate source values, to normalise them
before pseudonymisation, and by the leak scan.

Matching happens on a folded copy of the text: per-character NFKC, accents dropped, case
folded, every decimal digit and Chinese numeral (〇一二三, 幺 for a spoken 1, 两, 壹贰叁) as an
ASCII digit, and every invisible character removed (format characters such as zero-width
spaces, the BOM and soft hyphens; combining and enclosing marks such as variation selectors,
the combining grapheme joiner and the keycap; Hangul fillers and the Braille blank). Spans are
mapped back to the original text, so a caller replaces exactly what was found and keeps every
other byte (a "×10⁹/L" stays as it is, never its NFKC form).

Separators inside a number come in two strengths. Tight ones (up to 4 of whitespace, dashes,
underscores, slashes, parentheses, middle dots) may cut a number anywhere, as they always did.
Wide ones (longer whitespace runs; ``~ * | : 、 + # < >``, brackets of every kind; the words
``转``, ``分机``, ``ext`` and ``x``) join digit groups only in the shapes people write: a mobile
cut 3-4-4, 3-8, 7-4 or 4-4-3 (after an optional 86/0086 prefix), a landline cut between area
code and subscriber number (and the subscriber 3-4 or 4-4), a 15-digit ID cut 6-6-3, an
18-character ID cut 6-8-4 (the date also 4-2-2), 6-4-4-4, 3-3-4-4-4 or 4-4-4-4-2, with its
check character apart or not. So times ("08:30:00"), ratios ("1:10000"), ranges ("1~3"), blood
pressures and lists of codes next to each other do not run together into a number.

Known limits (what this does not promise): digits separated by '.' or ',' are separate numbers
(they are decimal points and thousands separators in every clinical value, and "1.3812345678"
must stay a number), nor are numbers cut by other letters ("191a8745b2685") or written with
look-alike letters ("l9l...", "O571...") found; a landline without its area code, or a number
with extra digits glued on, is found only as a known value of the record; a mobile, landline or
15-digit ID cut so that a part reads as a date (2024-05-12) or as a LOINC code with a valid check
digit ("13812-3 45678") is not reported, nor one cut by wide separators in another shape than
those above ("1~3~8~1~2~3~4~5~6~7~8"); in document mode, a mobile glued into a 16+ character
lower-case hex token is not reported (an 18-character ID is).

Libraries: landlines are validated with ``phonenumbers`` (Google's libphonenumber metadata: real
area codes and the subscriber length each one takes), which keeps digit runs such as two dates
from passing for a phone number. Mobiles use the plain shape ``1[3-9]`` + 9 digits instead of
phonenumbers' allocated-prefix list, so a scrubber errs on the side of redaction. The
administrative division codes behind the ID plausibility check come from ``python-stdnum``'s
table (``stdnum/cn/loc.dat``); its own ``stdnum.cn.ric`` is not used because it rejects
numbers whose county was created after the birth year, and such numbers are issued (a person
born in 1995 who first registered in a district formed in 2001).
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import itertools
import re
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK_CHARS = "10X98765432"

KINDS = ("resident-id", "mobile", "landline", "known")
PLACEHOLDERS = {"resident-id": "[id-number]", "mobile": "[phone]", "landline": "[phone]", "known": "[identifier]"}

# Tight separators, which may cut a number anywhere (at most 4 in a row), in folded text. '.'
# and ',' are none: they are decimal points and thousands separators. Parentheses are, for
# "(0571) 8765 4321".
_SEP = r"[\s\-_/\\()\u00b7\u2010-\u2015\u2027\u2043\u2212\u30fb]"
# Wide separators join numbers only in the shapes people write them in (see the module docstring).
_WIDE_CHARS = (r"\s\-_/\\()\u00b7\u2010-\u2015\u2027\u2043\u2212\u30fb"
               r"~\u301c\u223c*|:\u3001+#<>\[\]{}\u3008-\u3011\u3014-\u3017")
# Between the characters of a known value, also dots, commas and apostrophes ("Zhang, San").
_KNOWN_SEP_CHARS = (r"\s\-_/\\()\u00b7\u2010-\u2015\u2027\u2043\u2212\u30fb.,:'\u2018\u2019+"
                    r"~\u301c\u223c*|\u3001#<>\[\]{}\u3008-\u3011\u3014-\u3017")
_KNOWN_SEP = f"[{_KNOWN_SEP_CHARS}]"
# A run of digits and separators holding at least 11 digits (the shortest number found without a
# known value): shorter ones fail inside the regex engine, which keeps documents cheap. The
# words ext and 分机 are first written as "~~~" and "~~" (the same length, so positions hold).
# The lookahead changes no match (the ten repetitions that follow a match's first digit take ten
# characters or more of that class): it turns away, in one fast step, the digits that start none,
# most of them inside ids and pseudonyms (13 -> 9 µs a document that passes _may_hold_numbers).
_RUN_RE = re.compile(rf"[0-9](?=[0-9{_WIDE_CHARS}x转轉]{{10}})(?:[{_WIDE_CHARS}x转轉]*+[0-9]){{10,}}+(?:[{_WIDE_CHARS}转轉]{{0,16}}x)?")
_WORD_SEPS = (("ext", "~~~"), ("分机", "~~"), ("分機", "~~"))
_GROUP_RE = re.compile(r"[0-9]+")
_TIGHT_GAP = re.compile(rf"{_SEP}{{1,4}}")
_CHECK_X = re.compile(rf"[{_WIDE_CHARS}转轉]{{0,16}}x")  # an ID's check character after its 17 digits
_DATE_GROUPS_RE = re.compile(r"(?<![0-9])((?:19|20)[0-9]{2})([-/])([0-9]{1,2})\2([0-9]{1,2})(?![0-9])")
_NOT_DIGIT = re.compile(r"[^0-9]+")
_THREE_DIGITS = re.compile(rf"[0-9](?:{_SEP}{{0,4}}[0-9]){{2}}")
_LOINC_RE = re.compile(r"(?<![0-9\-])([0-9]{3,5})-([0-9])(?![0-9\-])")
_MOBILE_DIGITS = re.compile(r"(?:0086|86)?(1[3-9][0-9]{9})")
_KNOWN_STRIP = re.compile(_KNOWN_SEP + "+")
_KNOWN_KEPT = re.compile(f"[^{_KNOWN_SEP_CHARS}]")
_HEX = frozenset("0123456789abcdef")
# A cheap, exact test that _RUN_RE cannot match (_may_hold_numbers): in the UTF-8 bytes of the folded
# text, delete every byte that may be part of what _RUN_RE allows between two digits (its ASCII
# separators and every byte of a character beyond ASCII, 转 and 分机 among them: a superset) and the
# word "ext", and write each digit as '0'; every match of _RUN_RE then shows as 11 '0's in a row. Most
# resources have none (ids are hex, dates have 8 or 14 digits cut by letters), and this costs a few C
# passes where _RUN_RE tries a match at every digit.
_RUN_GLUE = bytes(c for c in range(128) if re.fullmatch(f"[{_WIDE_CHARS}x]", chr(c))) + bytes(range(128, 256))
_AS_DIGITS = bytes(48 if 48 <= c <= 57 else 97 for c in range(256))
# _AS_DIGITS keeping 'e' and 't': with x deleted, "ext" shows as "et" (so do a few other pairs: a superset)
_AS_DIGITS_ET = bytes(c if c in b"et" else d for c, d in enumerate(_AS_DIGITS))
_RUN_DIGITS = b"0" * 11
_MIN_RUN_DIGITS = 11  # the shortest number found without a known value: a mobile or landline
_MAX_ALIGNED = 16  # the longest number checked on group boundaries: 0086 (0)571 87654321


@dataclass(frozen=True, slots=True)
class Found:
    """One identifier in a text: its kind, its span in the ORIGINAL text and its normalised value.

    The value is an identifier: never log it (it is left out of the repr)."""

    kind: str  # resident-id | mobile | landline | known
    start: int
    end: int
    value: str = field(repr=False)
    detected: str | None = None  # for a known value: the detector's kind of the same span, if any


# ---- resident ID numbers ----------------------------------------------------------------

def resident_id_check_char(first17: str) -> str:
    """Return the GB 11643 check character for the first 17 digits of a resident ID number."""
    if len(first17) != 17 or not first17.isdigit():
        raise ValueError("expected 17 digits")
    total = sum(int(d) * w for d, w in zip(first17, _WEIGHTS, strict=True))
    return _CHECK_CHARS[total % 11]


def normalise_resident_id(value: str) -> str:
    """Strip spaces and upper-case a trailing x."""
    return value.strip().replace(" ", "").upper()


def is_valid_resident_id(value: str | None) -> bool:
    """True when value is an 18-character resident ID number: a real birth date (digits 7-14,
    1900 up to today) and a matching check character. The date test also keeps random 18-digit
    numbers (snapshot ids, barcodes) from passing for ID numbers in leak scans."""
    if not value:
        return False
    v = normalise_resident_id(value)
    if len(v) != 18 or not v[:17].isdigit() or not v[:17].isascii() or v[0] == "0":
        return False
    if _birth_date(v[6:14]) is None:
        return False
    return resident_id_check_char(v[:17]) == v[17]


def is_valid_legacy_resident_id(value: str | None) -> bool:
    """True when value is a legacy 15-digit resident ID number: a plausible administrative
    division code and a real birth date YYMMDD (read as 19YY). It has no check digit."""
    if not value:
        return False
    v = value.strip()
    return (len(v) == 15 and v.isdigit() and v.isascii() and v[0] != "0"
            and plausible_division_code(v[:6]) and _birth_date("19" + v[6:12]) is not None)


def plausible_division_code(code: str) -> bool:
    """True when the first 4 digits of a 6-digit code name a province and prefecture that exist
    or existed (python-stdnum's table), or the code is one that residence permits and
    foreigners' permanent residence cards use (810000/820000/830000; 9 + province code)."""
    if len(code) != 6 or not code.isdigit():
        return False
    if code in ("810000", "820000", "830000"):
        return True
    if code[0] == "9":
        return code[1:3] in _divisions()[0]
    return code[:4] in _divisions()[1]


@functools.cache
def _divisions() -> tuple[frozenset[str], frozenset[str]]:
    """(province codes, province + prefecture codes) from python-stdnum's division table."""
    from stdnum import numdb

    provinces: set[str] = set()
    prefectures: set[str] = set()
    for _length, low, high, _props, children in numdb.get("cn/loc").prefixes:
        for province in range(int(low), int(high) + 1):
            provinces.add(f"{province:02d}")
            for _l2, low2, high2, _p2, _c2 in children:
                for county in range(int(low2), int(high2) + 1):
                    prefectures.add(f"{province:02d}{county:04d}"[:4])
    return frozenset(provinces), frozenset(prefectures)


def _birth_date(yyyymmdd: str) -> dt.date | None:
    """The date in 8 digits when it is a real one from 1900 up to today."""
    year = int(yyyymmdd[:4])
    if year < 1900:
        return None
    try:
        born = dt.date(year, int(yyyymmdd[4:6]), int(yyyymmdd[6:8]))
    except ValueError:
        return None
    return born if born <= dt.date.today() else None


def _resident_id_18(digits: str) -> bool:
    """digits: 17 ASCII digits + a digit or 'x' (folded)."""
    return (digits[0] != "0" and _birth_date(digits[6:14]) is not None
            and resident_id_check_char(digits[:17]) == digits[17].upper()
            and plausible_division_code(digits[:6]))


# ---- phones ----------------------------------------------------------------------------

def _landline(digits: str) -> str | None:
    """The national form ('0' + area code + subscriber) when digits are a mainland landline,
    written nationally (0571...) or with the country code (86/0086, with or without the 0)."""
    if digits.startswith("0086"):
        nsn = digits[4:]
    elif digits.startswith("86"):
        nsn = digits[2:]
    elif digits[0] == "0":
        nsn = digits[1:]
    else:
        return None
    if nsn.startswith("0"):
        nsn = nsn[1:]  # +86 (0)571 ...
    if not 10 <= len(nsn) <= 11 or nsn[0] == "0":
        return None
    import phonenumbers

    number = phonenumbers.PhoneNumber(country_code=86, national_number=int(nsn))
    kind = phonenumbers.number_type(number)
    if kind in (phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE):
        return "0" + nsn
    return None


def _landline_parts(national: str) -> tuple[str, str]:
    """('0571', '87654321') from a landline's national form."""
    import phonenumbers

    number = phonenumbers.PhoneNumber(country_code=86, national_number=int(national[1:]))
    area = phonenumbers.length_of_geographical_area_code(number)
    return national[: area + 1], national[area + 1:]


# ---- folding: NFKC + lower case + ASCII digits, with a map back to the original ---------

class _FoldTable(dict):
    """str.translate table filled on first sight of each character."""

    def __missing__(self, code: int) -> str:
        out = _fold_char(chr(code))
        if len(out) != 1:  # known as resizing before any text can fold through it
            _RESIZING.add(chr(code))
            _resizing_re.cache_clear()
        self[code] = out
        return out


# Letters and symbols that show as nothing: Hangul fillers (NFKC turns U+3164 and U+FFA0 into
# U+1160) and the Braille blank.
_INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0\u2800")
_REMOVED_CATEGORIES = frozenset(("Cf", "Mn", "Me"))


def _fold_char(ch: str) -> str:
    """One character folded: NFKC, accents dropped ("Zhāng" -> "zhang"), case folded, any
    decimal digit or Chinese numeral as ASCII; an invisible character (format character,
    combining or enclosing mark, filler) folds to nothing, so "1\u200b3\ufe0f8" reads "138"."""
    if ch in _HANZI_DIGITS:  # 一三八一二三四五六七八 is how a phone number evades a text filter
        return _HANZI_DIGITS[ch]
    if ch in _INVISIBLE or unicodedata.category(ch) in _REMOVED_CATEGORIES:
        return ""
    out = unicodedata.normalize("NFKC", ch)
    decomposed = unicodedata.normalize("NFD", out)
    if any(c in _INVISIBLE or unicodedata.category(c) in _REMOVED_CATEGORIES for c in decomposed):
        out = "".join(c for c in decomposed
                      if c not in _INVISIBLE and unicodedata.category(c) not in _REMOVED_CATEGORIES)
    return "".join(
        str(unicodedata.decimal(c)) if not c.isascii() and unicodedata.decimal(c, None) is not None else c
        for c in out.casefold()
    )


_HANZI_DIGITS = {
    **{c: str(i) for i, c in enumerate("〇一二三四五六七八九")},
    **{c: str(i) for i, c in enumerate("零壹贰叁肆伍陆柒捌玖")},
    "幺": "1", "两": "2", "兩": "2", "貳": "2", "參": "3", "叄": "3", "陸": "6", "○": "0",
}
_HANZI_DIGIT_RE = re.compile("[" + "".join(_HANZI_DIGITS) + "]")
_RESIZING: set[str] = set()  # characters that fold to none or several
_TABLE = _FoldTable({c: chr(c).lower() for c in range(128)})


@functools.cache
def _resizing_re() -> re.Pattern[str] | None:
    if not _RESIZING:
        return None
    return re.compile("[" + "".join(re.escape(c) for c in sorted(_RESIZING)) + "]")


class _SpanMap:
    """Maps positions in the folded text back to the original, where some characters folded to
    none ("\u200b") or several ("①⑩" -> "10", "℃" -> "°c")."""

    __slots__ = ("_starts", "_orig", "_lens", "_shift")

    def __init__(self, text: str, pattern: re.Pattern[str]):
        self._starts: list[int] = []  # folded position where each resized character's output starts
        self._orig: list[int] = []
        self._lens: list[int] = []
        self._shift: list[int] = []  # folded - original after each resized character
        shift = 0
        for m in pattern.finditer(text):
            n = len(_TABLE[ord(m.group())])
            self._starts.append(m.start() + shift)
            self._orig.append(m.start())
            self._lens.append(n)
            shift += n - 1
            self._shift.append(shift)

    def __bool__(self) -> bool:
        return bool(self._starts)

    @property
    def shift(self) -> int:
        return self._shift[-1] if self._shift else 0

    def original(self, pos: int) -> int:
        """The original position of the folded character at pos."""
        k = bisect.bisect_right(self._starts, pos) - 1
        if k < 0:
            return pos
        if pos < self._starts[k] + self._lens[k]:
            return self._orig[k]
        return pos - self._shift[k]


def _fold(text: str) -> str:
    """Every character folded by _TABLE. ASCII runs fold with str.lower (what the table says for
    them, at C speed); only the runs of other characters go through the table, each run's
    folding remembered (display texts and names recur across records)."""
    if text.isascii():
        return text.lower()
    return _fold_pieces(text)[0]


def _folds(text: str) -> tuple[str, str, bytes]:
    """(_fold(text), _compact(_fold(text)), _fold(text) in UTF-8) in one pass: the compact form in
    UTF-8 too, where the known values are looked for (bytes.find, not str.find in UCS-2)."""
    if text.isascii():
        folded = text.lower()
        data = folded.encode()
        return folded, data.translate(None, _ASCII_SEPS), data
    return _fold_pieces(text)


_NON_ASCII_BYTES = bytes(0 if c < 128 else 1 for c in range(256))


def _fold_pieces(text: str) -> tuple[str, bytes, bytes]:
    """_folds of a text with other characters than ASCII. Its runs of them are found in its UTF-8
    bytes (those of a character other than ASCII are all >= 0x80), where bytes.lower() changes only
    the ASCII letters: C passes, no regex. Separators are removed per piece (the removal of single
    characters commutes with concatenation)."""
    data = text.encode("utf-8", "surrogatepass").lower()
    marks = data.translate(_NON_ASCII_BYTES)
    runs: list[tuple[int, int]] = []
    plain = True
    pos = 0
    while (start := marks.find(b"\x01", pos)) >= 0:
        pos = marks.find(b"\x00", start)
        if pos < 0:
            pos = len(data)
        runs.append((start, pos))
        plain = plain and _plain_run(data[start:pos])
    if plain:  # every run of other characters folds to itself and holds no separator (most Chinese text): C passes
        return data.decode("utf-8", "surrogatepass"), data.translate(None, _ASCII_SEPS), data
    folded: list[str] = []
    compact: list[bytes] = []
    encoded: list[bytes] = []
    pos = 0
    for start, end in runs:
        if start > pos:
            part = data[pos:start]
            folded.append(part.decode("ascii"))
            compact.append(part.translate(None, _ASCII_SEPS))
            encoded.append(part)
        run, run_compact, run_encoded = _fold_run(data[start:end])
        folded.append(run)
        compact.append(run_compact)
        encoded.append(run_encoded)
        pos = end
    if pos < len(data):
        part = data[pos:]
        folded.append(part.decode("ascii"))
        compact.append(part.translate(None, _ASCII_SEPS))
        encoded.append(part)
    return "".join(folded), b"".join(compact), b"".join(encoded)


@functools.lru_cache(maxsize=8192)
def _fold_run(run: bytes) -> tuple[str, bytes, bytes]:
    """A run of characters other than ASCII (its UTF-8 bytes) folded by the table, that without
    separators in UTF-8, and the folded run in UTF-8."""
    folded = run.decode("utf-8", "surrogatepass").translate(_TABLE)
    return folded, _KNOWN_STRIP.sub("", folded).encode("utf-8", "surrogatepass"), folded.encode("utf-8", "surrogatepass")


@functools.lru_cache(maxsize=8192)
def _plain_run(run: bytes) -> bool:
    """Whether a run of characters other than ASCII (its UTF-8 bytes) folds to itself and holds no separator."""
    _folded, compact, encoded = _fold_run(run)
    return encoded == run and compact == encoded


def _span_map(text: str, folded: str) -> _SpanMap | None:
    """The map back from folded to text, or None when every character folded to one."""
    if text.isascii():
        return None
    for _attempt in range(2):
        pattern = _resizing_re()
        smap = _SpanMap(text, pattern) if pattern is not None else None
        if smap is None or not smap:
            if len(folded) == len(text):
                return None
        elif smap.shift == len(folded) - len(text):
            return smap
        _resizing_re.cache_clear()  # another thread added a resizing character meanwhile
    raise AssertionError("folded text does not map back to the original")


class _Origin:
    """Positions of a folded text in its original, the map built on first use (most texts
    never need it)."""

    __slots__ = ("_text", "_folded", "_map", "_built")

    def __init__(self, text: str, folded: str):
        self._text, self._folded = text, folded
        self._map: _SpanMap | None = None
        self._built = False

    def __call__(self, pos: int) -> int:
        if not self._built:
            self._map, self._built = _span_map(self._text, self._folded), True
        return pos if self._map is None else self._map.original(pos)


# ---- known values of one record -------------------------------------------------------

class KnownValues:
    """The identifying values of one source record (names, ID numbers, phones, MRNs, addresses),
    prepared once so that finding them in many strings of the record is cheap.

    Matching is on folded text (NFKC, accents dropped, case folded) and ignores separators
    inside the value: "张三" is found as "张 三", "MRN-00123" as "mrn00123", a phone by its
    digits, a pinyin name "Zhang San" as "zhangsan", "ZHANG SAN", "Zhāng Sān" and "San Zhang".
    Values shorter than 2 characters, and numeric ones shorter than 6 digits, are ignored (they
    would wipe ordinary numbers). Any other value is found whatever touches it, also glued to
    other digits ("M1000001191..." or "21002345" for MRN 100234: redacting a longer number that
    holds a known value is the price of not letting digits hide it); only a word of letters is
    not found inside a longer word ("Li Na" not in "linagliptin"), and a name of numerals (陆伍)
    not inside a longer number. An ID number is also found in its legacy 15-digit
    form (and the reverse), a landline also by its subscriber number, and an address also by its
    part below the district ("文三路12号3幢").

    Preparing costs no regex compilation (records are many): the text is compacted once (its
    separators removed) and each value looked up with str.find."""

    __slots__ = ("_keys", "_heads")

    def __init__(self, values: Iterable[str | None] = ()):
        keys: set[str] = set()
        for value in values:
            if isinstance(value, str) and value.strip():
                keys.update(_known_keys(value))
        self._keys = tuple(map(_key_form, sorted(sorted(keys), key=len, reverse=True)))  # longest first, then in order
        self._heads: frozenset[str] | None = None

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:  # never the values
        return f"KnownValues({len(self._keys)} forms)"

    def forms(self) -> tuple[str, ...]:
        """Every compact form the values are found by (never shown: they are the values)."""
        return tuple(key for key, _, _, _ in self._keys)

    def forms_of(self, alphabet: frozenset[str]) -> tuple[str, ...]:
        """The compact forms made only of characters in alphabet: the only ones a text written in
        that alphabet (lowercase hex, say) can hold."""
        return tuple(key for key, _, _, _ in self._keys if set(key) <= alphabet)

    def absent_from(self, pairs: frozenset[str]) -> bool:
        """True when no value can be in a text whose compact form has only these pairs of adjacent
        characters: every form is 2 characters or more, so a text holding one holds its first two."""
        if self._heads is None:
            self._heads = frozenset(k[:2] for k, _, _, _ in self._keys)
        return self._heads.isdisjoint(pairs)

    def spans(self, folded: str, compact: bytes | None = None) -> list[tuple[int, int, str]]:
        """(start, end, compact value) of every known value in an already folded text
        (compact: _compact(folded) in UTF-8, when the caller has it). Until a form is found, the
        forms are looked for in those bytes (bytes.find; in a str holding Chinese, UCS-2, str.find
        widens each form first): a form in UTF-8 is found only where a character starts, so it is in
        the bytes when it is in the text. From the first one found (in 2 % of documents), they are
        looked for in the decoded text, where a match's position is its character."""
        if not self._keys:
            return []
        if compact is None:
            compact = _compact(folded)
        kept: list[int] | range = range(0)
        chars: str | None = None  # the compact text, once a form is in it
        out = []
        for key, encoded, before, after in self._keys:
            if chars is None:
                if encoded not in compact:
                    continue
                chars = compact.decode("utf-8", "surrogatepass")
                kept = range(len(folded)) if len(chars) == len(folded) else [m.start() for m in _KNOWN_KEPT.finditer(folded)]
            i = chars.find(key)
            while i >= 0:
                start, end = kept[i], kept[i + len(key) - 1] + 1
                if _edge_free(folded, start - 1, -1, before) and _edge_free(folded, end, 1, after):
                    out.append((start, end, key))
                i = chars.find(key, i + 1)
        return out


_ASCII_SEPS = bytes(c for c in range(128) if _KNOWN_STRIP.fullmatch(chr(c)))


@functools.cache
def _non_ascii_sep() -> re.Pattern[str]:
    """The separators beyond ASCII, as one character class (every one is in the BMP)."""
    chars = "".join(chr(c) for c in range(0x80, 0x10000) if not 0xD800 <= c < 0xE000 and _KNOWN_STRIP.fullmatch(chr(c)))
    return re.compile("[" + re.escape(chars) + "]")


def _compact(folded: str) -> bytes:
    """folded without its separators (what _KNOWN_STRIP removes), in UTF-8. When every separator in
    it is ASCII, as in nearly every resource, bytes.translate deletes them at C speed."""
    if not folded.isascii() and _non_ascii_sep().search(folded) is not None:
        return _KNOWN_STRIP.sub("", folded).encode("utf-8", "surrogatepass")
    return folded.encode("utf-8", "surrogatepass").translate(None, _ASCII_SEPS)


@functools.lru_cache(maxsize=16384)
def _key_form(key: str) -> tuple[str, bytes, str | None, str | None]:
    return key, key.encode("utf-8", "surrogatepass"), _edge(key, 0), _edge(key, -1)


def _edge(key: str, index: int) -> str | None:
    """What must not touch this end of the key: 'digit' for a short number (only a name of
    numerals keeps one: numeric values that short are dropped), 'letter' for a word, 'alnum'
    (neither letter nor digit) for a word of fewer than 4 letters."""
    if key.isdigit() and len(key) < 6:
        return "digit"
    if key[index].isascii() and key[index].isalpha() and not any(c.isdigit() for c in key):
        # a short word ("ca", a state) is no word inside a hex token ("0a9ca0b1") either
        return "alnum" if len(key) < 4 and key.isascii() and key.isalpha() else "letter"
    return None


def _edge_free(folded: str, pos: int, step: int, kind: str | None) -> bool:
    if kind is None or not 0 <= pos < len(folded):
        return True
    c = folded[pos]
    if kind == "letter":
        return not ("a" <= c <= "z")
    if kind == "alnum":
        return not ("a" <= c <= "z" or "0" <= c <= "9")
    if c.isdigit():
        return False
    beyond = pos + step  # "0.123456" and "123,456" are other numbers
    return not (c in ".," and 0 <= beyond < len(folded) and folded[beyond].isdigit())


@functools.lru_cache(maxsize=16384)
def _known_keys(value: str) -> frozenset[str]:
    """The compact forms a known value is found by (a pure function of the value: records share
    values, a patient's name and MRN come back with each of their rows)."""
    folded = _fold(value.strip())
    compact = _KNOWN_STRIP.sub("", folded)
    keys = {compact}
    if compact.isascii() and (compact.isdigit() or (compact[:-1].isdigit() and compact[-1:] == "x")):
        mobile = _MOBILE_DIGITS.fullmatch(compact)
        if len(compact) == 18 and is_valid_resident_id(compact):
            keys.add(compact[:6] + compact[8:17])
        elif is_valid_legacy_resident_id(compact):
            first17 = compact[:6] + "19" + compact[6:]
            keys.add((first17 + resident_id_check_char(first17)).lower())
        elif mobile:
            keys.add(mobile.group(1))
        elif 11 <= len(compact) <= _MAX_ALIGNED and compact.isdigit() and (landline := _landline(compact)):
            keys.add(landline)
            keys.add(_landline_parts(landline)[1])
    else:
        words = [w for w in re.split(_KNOWN_SEP + "+", folded) if w]
        if 2 <= len(words) <= 3 and all(w.isascii() and w.isalpha() for w in words):
            keys.add("".join(reversed(words)))  # "San Zhang"
        tail = re.split(r"[省市区县镇乡]", compact)[-1]
        if tail != compact and len(tail) >= 4 and re.search(r"[0-9]", tail):
            keys.add(tail)  # 文三路12号3幢 of 浙江省杭州市西湖区文三路12号3幢
    # A name of numerals (一一, 陆伍) folds to digits but is no number: keep it.
    numeric = _KNOWN_STRIP.sub("", unicodedata.normalize("NFKC", value)).isdigit()
    return frozenset(k for k in keys if len(k) >= 2 and not (numeric and k.isdigit() and len(k) < 6))


@functools.lru_cache(maxsize=1024)
def _known_values(values: tuple[str, ...]) -> KnownValues:
    return KnownValues(values)


def known_values_of(values: tuple[str, ...]) -> KnownValues:
    """The KnownValues of a record's values, prepared once per distinct tuple (the scrubber and the
    leak scan of one record share it)."""
    return _known_values(values)


_NO_KNOWN = KnownValues()


# ---- the detector ------------------------------------------------------------------------

def find_identifiers(text: str, known: KnownValues | Iterable[str] = (), *, document: bool = False) -> list[Found]:
    """Every identifier in text, as non-overlapping spans of the original text, in order.

    Numbers may carry separators between their digits (tight ones anywhere, wide ones in the
    shapes people write; never '.' or ',': see the module docstring), invisible characters, and
    any letters around them (``SFZ``, ``tel``, ``ID:``). An 18-character ID number is found in
    any window of a digit run (it has a check digit and a birth date), across wide separators
    when made of whole digit groups; 15-digit IDs, mobiles and landlines only on the boundaries
    of the run's digit groups, and never through a date written YYYY-MM-DD. Digits glued to a
    known value of the record are read again without it, so "M1000001138 1234 5678" yields the
    MRN and the mobile. ``document=True`` is for whole JSON documents: a digit group inside a
    lower-case hexadecimal token of 16+ characters (pseudonyms, hashes, resource ids) is no
    15-digit ID, mobile or landline there (18-character IDs are still looked for)."""
    if time.time() >= _today_ends:
        _new_day()
    if not isinstance(known, KnownValues):
        known = _known_values(known if isinstance(known, tuple) else tuple(known)) if known else _NO_KNOWN
    if len(text) > _MEMO_LEN:
        folded, compact, data = _folds(text)
        return _find(text, folded, known.spans(folded, compact), document, data)
    # Short texts (displays, units, names) recur: what they hold besides the record's known values
    # is remembered. When none of the known values is in the text, that is the whole answer: the
    # known values only add spans of their own and a second number pass around them.
    memo = _PLAIN[document]
    hit = memo.get(text)
    if hit is None:
        if len(memo) >= _MEMO_SIZE:
            memo.clear()
        folded, compact, data = _folds(text)
        chars = compact.decode("utf-8", "surrogatepass")
        pairs = frozenset(chars[i:i + 2] for i in range(len(chars) - 1))
        hit = memo[text] = (folded, compact, pairs, tuple(_find(text, folded, [], document, data)))
    folded, compact, pairs, plain = hit
    if not known or known.absent_from(pairs):
        return list(plain)
    known_spans = known.spans(folded, compact)
    return _find(text, folded, known_spans, document) if known_spans else list(plain)


#: find_identifiers' memo of short texts without known values, by document mode: (folded, compact,
#: its pairs of adjacent characters, found).
_PLAIN: tuple[dict[str, tuple[str, bytes, frozenset[str], tuple[Found, ...]]], dict[str, tuple[str, bytes, frozenset[str], tuple[Found, ...]]]] = ({}, {})
_MEMO_LEN, _MEMO_SIZE = 128, 4096  # ~4 KB a 50-character text, at most ~45 MB in all
_today_ends = 0.0  # when the local date changes: the memos hold verdicts on birth dates "up to today"


def _new_day() -> None:
    """Forget every memo that depends on today's date (a resident ID's birth date may not be in the future)."""
    global _today_ends
    tomorrow = dt.date.today() + dt.timedelta(days=1)  # before clearing: a later date only clears again
    for memo in _PLAIN:
        memo.clear()
    _known_keys.cache_clear()
    _known_values.cache_clear()
    _today_ends = dt.datetime.combine(tomorrow, dt.time()).timestamp()  # local midnight


def _find(text: str, folded: str, known_spans: list[tuple[int, int, str]], document: bool, data: bytes | None = None) -> list[Found]:
    """find_identifiers on a folded text whose known-value spans are found already (data: folded in UTF-8, if at hand)."""
    digits = _may_hold_numbers(data if data is not None else folded.encode("utf-8", "surrogatepass"))
    spans: list[tuple[int, int, int, str, str]] = [  # start, end, priority, kind, value
        (start, end, 0, "known", value) for start, end, value in known_spans
    ]
    if not digits and not spans:
        return []
    origin = _Origin(text, folded)
    if digits:
        _numbers(text, folded, document, origin, spans)
        if known_spans:
            pieces, pos = [], 0
            for start, end, _value in sorted(known_spans):
                if start >= pos:
                    pieces += (folded[pos:start], "\0" * (end - start))
                    pos = end
                elif end > pos:
                    pieces.append("\0" * (end - pos))
                    pos = end
            pieces.append(folded[pos:])
            blanked = "".join(pieces)
            if _may_hold_numbers(blanked.encode("utf-8", "surrogatepass")):
                _numbers(text, blanked, document, origin, spans)
    if not spans:
        return []
    # Overlapping candidates become one span covering them all (no digit of any survives),
    # named after the strongest: a known value of the record first (the leak scan never exempts
    # one), then an ID's check digit, a mobile's shape, a landline; then the longest.
    spans.sort()
    merged: list[list] = []  # start, end, kind, value, priority, the strongest detector kind
    for start, end, priority, kind, value in spans:
        detected = None if kind == "known" else kind
        if merged and start < merged[-1][1]:
            last = merged[-1]
            if (priority, start - end) < (last[4], last[0] - last[1]):
                last[2], last[3], last[4] = kind, value, priority
            if detected and (last[5] is None or KINDS.index(detected) < KINDS.index(last[5])):
                last[5] = detected
            last[1] = max(last[1], end)
        else:
            merged.append([start, end, kind, value, priority, detected])
    return [Found(kind, origin(start), _marks_after(text, origin(end - 1) + 1), value, detected if kind == "known" else None)
            for start, end, kind, value, _priority, detected in merged]


def _marks_after(text: str, end: int) -> int:
    """end moved past the combining and enclosing marks on the last character ("5\ufe0f\u20e3"
    is a keycap 5: no mark is left to decorate what follows)."""
    while end < len(text) and not text[end].isascii() and unicodedata.category(text[end]) in ("Mn", "Me"):
        end += 1
    return end


def _may_hold_numbers(data: bytes) -> bool:
    """False when _RUN_RE cannot match the folded text whose UTF-8 bytes are data: no 11 digits joined by
    separators or the words of _WORD_SEPS (see _RUN_GLUE). Only a digit glued to "ext" makes the second test run."""
    squeezed = data.translate(_AS_DIGITS_ET, _RUN_GLUE)
    return _RUN_DIGITS in squeezed or (b"0et" in squeezed and _RUN_DIGITS in squeezed.replace(b"et", b""))


def _numbers(text: str, folded: str, document: bool, origin: _Origin, out: list) -> None:
    """The numbers _RUN_RE finds in folded (spans of folded), added to out; for a text that passed _may_hold_numbers."""
    for word, seps in _WORD_SEPS:
        folded = folded.replace(word, seps)
    for run in _RUN_RE.finditer(folded):
        _numbers_in_run(text, folded, run, document, origin, out)


def _numbers_in_run(text: str, folded: str, run: re.Match[str], document: bool, origin: _Origin, out: list) -> None:
    base = run.start()
    chunk = run.group()
    if document and len(chunk) < 17 and chunk.isascii() and chunk.isdigit():
        # Digits in a hex token (an id, a pseudonym, a hash: most runs of a resource): one group, blocked
        # below as a hex token, and too few for an 18-character ID, the only number read in one. Found
        # the same way here, before the work on dates, groups and gaps; a Chinese numeral would cut the group.
        start, end = origin(base), origin(run.end() - 1) + 1
        if _in_hex_token(text, start, end) and not _HANZI_DIGIT_RE.search(text, start, end):
            return
    # Most runs are dates and times: leave them cheaply. A number needs 11 digits outside dates
    # (or 17 for an ID), and a part of 3 digits or more not cut by a wide separator.
    total = len(_NOT_DIGIT.sub("", chunk))
    dates = [m for m in _DATE_GROUPS_RE.finditer(chunk)
             if 1 <= int(m.group(3)) <= 12 and 1 <= int(m.group(4)) <= 31 and 1900 <= int(m.group(1)) <= 2100]
    if (total < 17 and total - sum(m.end() - m.start() - 2 for m in dates) < _MIN_RUN_DIGITS) or not _THREE_DIGITS.search(chunk):
        return
    groups = [(m.start(), m.end(), m.group()) for m in _GROUP_RE.finditer(folded, base, run.end())]
    if not text.isascii():
        groups = _split_scripts(text, groups, origin)
    n = len(groups)

    # Mobiles, landlines and 15-digit IDs: only on group boundaries, never through a list of
    # LOINC codes, the decimals of a number, a date ("Na 138 2024-03-05" holds a mobile's digits,
    # "2024-05-12 2024-03-06" a valid Suzhou number, 0512 20240306) or (in documents) a hex token.
    starts = [g[0] for g in groups]

    def overlapped(m: re.Match[str]) -> range:
        return range(max(bisect.bisect_right(starts, m.start() + base) - 1, 0),
                     bisect.bisect_left(starts, m.end() + base))

    blocked = [False] * n
    for m in dates:
        for i in overlapped(m):
            blocked[i] = True
    for m in _LOINC_RE.finditer(chunk):  # "1558-6 17856-6", "17856-6 60/100" read as mobiles
        if _luhn_check_digit(m.group(1)) == m.group(2):
            for i in overlapped(m):
                blocked[i] = True
    if base >= 2 and folded[base - 1] == "." and folded[base - 2].isdigit():
        blocked[0] = True  # the decimals of a number ("0.13812345678")
    stretch = longest = 0
    for (_s, _e, group), no in zip(groups, blocked, strict=True):
        stretch = 0 if no else stretch + len(group)
        longest = max(longest, stretch)
    if longest < _MIN_RUN_DIGITS and total < 17:
        return  # "2024-03-05 08:30:00": nothing left around the date

    # What lies between groups: 0 nothing (a change of script), 1 a tight separator, 2 a wide one.
    gaps = []
    segment = longest_segment = len(groups[0][2])
    for g in range(n - 1):
        between = folded[groups[g][1]:groups[g + 1][0]]
        kind = 0 if not between else 1 if _TIGHT_GAP.fullmatch(between) else 2
        gaps.append(kind)
        segment = len(groups[g + 1][2]) + (segment if kind < 2 else 0)
        longest_segment = max(longest_segment, segment)
    if longest_segment < 3:
        return  # "08:00|12:00|18:00": no number has only 1- and 2-digit parts
    wide_before = [0]  # wide gaps before each group
    for kind in gaps:
        wide_before.append(wide_before[-1] + (kind == 2))
    if total >= 17:
        _ids_18(folded, run.end(), groups, gaps, wide_before, out)
    if longest < _MIN_RUN_DIGITS:
        return
    if document:
        for i, (s, e, _) in enumerate(groups):
            blocked[i] = blocked[i] or _in_hex_token(text, origin(s), origin(e - 1) + 1)
    for i in range(n):
        digits = ""
        for j in range(i, n):
            if blocked[j]:
                break
            digits += groups[j][2]
            if len(digits) > _MAX_ALIGNED:
                break
            if len(digits) < _MIN_RUN_DIGITS:
                continue
            start, end = groups[i][0], groups[j][1]
            wide = wide_before[j] != wide_before[i]
            mobile = _MOBILE_DIGITS.fullmatch(digits)
            if mobile:
                if not wide or _shaped(_cuts(groups, gaps, i, j), len(digits) - 11, ({3, 7}, {4, 8})):
                    out.append((_with_prefix(folded, start, end, digits), end, 2, "mobile", mobile.group(1)))
                continue
            if len(digits) == 15 and is_valid_legacy_resident_id(digits):
                if not wide or _shaped(_cuts(groups, gaps, i, j), 0, ({6, 12},)):
                    out.append((start, end, 1, "resident-id", digits))
                continue
            cuts = _cuts(groups, gaps, i, j) if wide else set()
            if wide and not any(_shaped(cuts, trunk, ({area, area + 3}, {area, area + 4}))
                                for trunk in _TRUNKS.get(digits[:4], _TRUNKS.get(digits[:2], _TRUNKS.get(digits[:1], ())))
                                for area in (2, 3)):
                continue  # no landline has this shape (and asking phonenumbers is dear)
            landline = _landline(digits)
            if landline:
                area = len(_landline_parts(landline)[0]) - 1
                if not wide or _shaped(cuts, len(digits) - len(landline) + 1, ({area, area + 3}, {area, area + 4})):
                    out.append((_with_prefix(folded, start, end, digits), end, 3, "landline", landline))


# How many digits come before a landline's area code, by how the number starts: 0086 (0)571...,
# 86 (0)571..., 0571...
_TRUNKS = {"0086": (4, 5), "86": (2, 3), "0": (1,)}
# Where an 18-character ID may be cut by wide separators: 6-8-4 (with its date written 4-2-2),
# 6-4-4-4, 3-3-4-4-4, 4-4-4-4-2, each with the check character apart.
_ID_SHAPES = ({3, 6, 10, 14, 17}, {6, 10, 12, 14, 17}, {4, 8, 12, 16, 17})


def _ids_18(folded: str, run_end: int, groups: list[tuple[int, int, str]], gaps: list[int],
            wide_before: list[int], out: list) -> None:
    """18-character ID numbers in a run: in every window (the check digit and the date make
    chance rare), across a wide separator only when the window is made of whole groups cut in
    one of the ID's shapes ("1:10000 1999-04-08 01:00" is none)."""
    units = "".join(g[2] for g in groups)
    positions = [p for s, e, _ in groups for p in range(s, e)]
    unit_group = [g for g, (s, e, _) in enumerate(groups) for _ in range(s, e)]

    def aligned(k: int, last: int) -> bool:
        first, end = unit_group[k], unit_group[last]
        if wide_before[end] == wide_before[first]:
            return True
        if (k > 0 and unit_group[k - 1] == first) or (last + 1 < len(units) and unit_group[last + 1] == end):
            return False
        cuts = {u - k for u in range(k + 1, last + 1) if unit_group[u] != unit_group[u - 1] and gaps[unit_group[u - 1]]}
        return any(cuts <= shape for shape in _ID_SHAPES)

    for k in range(len(units) - 17):
        window = units[k:k + 18]
        if _resident_id_18(window) and aligned(k, k + 17):
            out.append((positions[k], positions[k + 17] + 1, 1, "resident-id", window))
    digit_end = 0  # ... and ending in a check character x after its 17 digits
    for g, (_s, e, group) in enumerate(groups):
        digit_end += len(group)
        after = folded[e:groups[g + 1][0]] if g + 1 < len(groups) else folded[e:run_end]
        if digit_end >= 17 and "x" in after and (x := _CHECK_X.match(after)):
            window = units[digit_end - 17:digit_end] + "x"
            if _resident_id_18(window) and aligned(digit_end - 17, digit_end - 1):
                out.append((positions[digit_end - 17], e + x.end(), 1, "resident-id", window.upper()))


def _split_scripts(text: str, groups: list[tuple[int, int, str]], origin: _Origin) -> list[tuple[int, int, str]]:
    """Groups cut where Chinese numerals meet other digits, so a number is also found with a
    numeral glued on ("第一13812345678", "两13812345678")."""
    if not _HANZI_DIGIT_RE.search(text, origin(groups[0][0]), origin(groups[-1][1] - 1) + 1):
        return groups
    out = []
    for s, e, group in groups:
        cut = s
        hanzi = text[origin(s)] in _HANZI_DIGITS
        for p in range(s + 1, e):
            if (text[origin(p)] in _HANZI_DIGITS) != hanzi:
                out.append((cut, p, group[cut - s:p - s]))
                cut, hanzi = p, not hanzi
        out.append((cut, e, group[cut - s:]))
    return out


def _cuts(groups: list[tuple[int, int, str]], gaps: list[int], i: int, j: int) -> set[int]:
    """Where separators cut the digits of groups i..j (digit counts from the first)."""
    cuts = set()
    count = 0
    for g in range(i, j):
        count += len(groups[g][2])
        if gaps[g]:
            cuts.add(count)
    return cuts


def _shaped(cuts: set[int], prefix: int, shapes: tuple[set[int], ...]) -> bool:
    """True when the cuts after the first `prefix` digits (a country code, a trunk 0) are all
    those of one of the shapes; cuts inside the prefix are free."""
    rel = {c - prefix for c in cuts if c > prefix}
    return any(rel <= shape for shape in shapes)


def _luhn_check_digit(digits: str) -> str:
    """The mod-10 check digit LOINC codes carry ("2345" -> "7")."""
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 == 0 else 1)
        total += n // 10 + n % 10
    return str(-total % 10)


def _with_prefix(folded: str, start: int, end: int, digits: str) -> int:
    """Start of a phone number's span: with a '+' before a country code, and with an opening
    parenthesis whose closing one is inside the number."""
    if start > 0 and folded[start - 1] == "+" and digits.startswith("86"):
        start -= 1
    if start > 0 and folded[start - 1] == "(" and ")" in folded[start:end]:
        start -= 1
    return start


def _in_hex_token(text: str, start: int, end: int) -> bool:
    """True when text[start:end] lies in a token of 16+ lower-case hex characters (upper case is
    not ours, so it does not count)."""
    left = start
    while left > 0 and text[left - 1] in _HEX:
        left -= 1
    right = end
    while right < len(text) and text[right] in _HEX:
        right += 1
    return right - left >= 16


_HEX_VALUE = "[0-9a-f]{16,}"  # a value hex_suspects may leave out is lowercase hex of 16 characters or more
_ID_RUN = 17  # an 18-character ID in hex has 18 digits in a row (its check character x is no hex): 17 is a margin
_HEX_LINES = re.compile(rf"{_HEX_VALUE}(?:\n{_HEX_VALUE})*")
_ID_DIGITS = b"0" * _ID_RUN
# hex_suspects' two tests of one value, as RE2 patterns for a column in Arrow (hub.leakscan._arrow_suspects)
HEX_VALUE_PATTERN = f"^{_HEX_VALUE}$"
ID_DIGITS_PATTERN = f"[0-9]{{{_ID_RUN}}}"
HEX_DIGITS = _HEX


def hex_suspects(values: list[str], known: KnownValues) -> list[str]:
    """values without those find_identifiers(document=True) cannot find anything in, when every value is
    lowercase hex of 16 characters or more (ids, pseudonyms, hashes); any other list as it is.

    Such a value is a hex token (_in_hex_token): in it, no digits make a mobile, a landline or a
    15-digit ID, and an 18-character ID needs 18 digits in a row (no hex letter is in _RUN_GLUE). A
    known value is found only where one of its forms made of hex characters stands (forms_of). A value
    holding neither 17 digits in a row nor such a form is left out. A value holding a line break is no
    hex value: the detector reads a number or a known value across it."""
    joined = "\n".join(values)
    if not values or joined.count("\n") != len(values) - 1 or _HEX_LINES.fullmatch(joined) is None:
        return values
    starts = list(itertools.accumulate((len(t) + 1 for t in values[:-1]), initial=0))
    keep: set[int] = set()
    for text, needle in ((joined.encode().translate(_AS_DIGITS), _ID_DIGITS), *((joined, f) for f in known.forms_of(_HEX))):
        i = text.find(needle)
        while i >= 0:
            k = bisect.bisect_right(starts, i) - 1
            keep.add(k)
            i = text.find(needle, starts[k + 1] if k + 1 < len(starts) else len(text))  # the next value
    return [values[k] for k in sorted(keep)]


def pieces_clean(texts: list[str], join: str, known: KnownValues) -> bool:
    """True when find_identifiers(join.join(texts), known, document=True) finds nothing, judged on the
    joined text's distinct pieces between double quotes, each scanned once: in a column of FHIR JSON
    every resource repeats its keys, codes, units, displays and references, and the distinct pieces
    are a small part of the text. False when the pieces hold a finding (the caller then scans the
    whole text, which places it) or when a known value's form holds a '"'.

    Sound because no finding can hold a '"' (no character class on the number path takes it, and
    folding turns only U+FF02 into one, inside a piece of the original text), and every read
    beyond a digit run (a hex token, marks, a letter prefix, a check character, a decimal point)
    stops at a '"' or reads the same at the end of a text: the findings of a text are those of its
    pieces. Known values are found within a piece unless one of their forms holds a '"' (their
    edges read a '"' as they read the end of a text). The pieces are exactly the joined text's: the
    last piece of one text, join and the first of the next are one piece."""
    if not texts or any('"' in form for form in known.forms()):
        return False
    pieces: set[str] = set()
    current = None
    for text in texts:
        parts = text.split('"')
        if current is not None:
            parts[0] = current + join + parts[0]
        current = parts.pop()
        pieces.update(parts)
    pieces.add(current)
    return not find_identifiers('"'.join(pieces), known, document=True)


# ---- the simple interfaces -------------------------------------------------------------

def find_resident_ids(text: str) -> list[str]:
    """Every substring of text that is a resident ID number (18 characters with a valid check
    character, or a legacy 15-digit number), however written (see find_identifiers)."""
    return [text[f.start:f.end] for f in find_identifiers(text) if f.kind == "resident-id"]


def find_mobile_numbers(text: str) -> list[str]:
    """Every substring of text that is a mainland mobile number, however written."""
    return [text[f.start:f.end] for f in find_identifiers(text) if f.kind == "mobile"]


def redact_identifiers(text: str, known: KnownValues | Iterable[str] = ()) -> str:
    """text with every identifier replaced by [id-number], [phone] or (a known value of the
    record that is no ID number or phone) [identifier]; every other character is kept exactly as
    it was."""
    found = find_identifiers(text, known)
    if not found:
        return text
    pieces: list[str] = []
    pos = 0
    for f in found:
        pieces.append(text[pos:f.start])
        pieces.append(PLACEHOLDERS[f.detected or f.kind])
        pos = f.end
    pieces.append(text[pos:])
    return "".join(pieces)
