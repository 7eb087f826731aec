"""The leak scan of hex columns (ids, pseudonyms, hashes) skips only values it could find nothing in.

Scanner.columns leaves out of detection the values of an all-lowercase-hex column that hold
neither 17 digits in a row nor a canary form made of hex characters (Scanner._suspects). The
promise: a value left out is one the detector finds nothing in, and a scan finds every
identifier planted in such a column, in the row it is in, exactly as the full scan does.
"""

from __future__ import annotations

import random
import re
import secrets

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.identifiers import resident_id_check_char
from hub.leakscan import Scanner, detect

CANARIES = frozenset({
    "13800138000",  # a mobile: digits only, so hex can hold it
    "110101199003071234",  # an ID number
    "0571-88001234",  # a landline
    "Ada Bea",  # a name written in hex letters
    "Zhang San",  # a name hex cannot hold
})


def _valid_id(birth: str = "19900307", area: str = "330106", seq: str = "123") -> str:
    first17 = area + birth + seq
    return first17 + resident_id_check_char(first17)


def _hex(n: int) -> str:
    return secrets.token_hex(n)[:n]


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner(CANARIES)


def _plain(scanner: Scanner) -> Scanner:
    """The same scan without the hex shortcut: every value goes through detection."""
    full = Scanner(scanner.canaries, scanner.policy)
    full._suspects = lambda distinct: distinct
    return full


_pieces = st.one_of(
    st.text(alphabet="0123456789abcdef", min_size=1, max_size=24),
    st.text(alphabet="0123456789", min_size=10, max_size=22),  # digit runs around the thresholds
    st.sampled_from(["13800138000", "110101199003071234", "0571", "88001234", "adabea", "beaada", _valid_id()]),
    st.builds(lambda d, s: _valid_id(seq=f"{s:03d}", birth=d), st.sampled_from(["19900307", "20010101", "19751231"]),
              st.integers(0, 999)),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_pieces, min_size=1, max_size=6).map("".join).filter(lambda v: len(v) >= 16))
def test_a_hex_value_left_out_holds_nothing_the_detector_finds(value):
    scanner = Scanner(CANARIES)
    if scanner._suspects([value]) == []:
        assert detect(value, scanner.known) == [], value


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(_pieces, min_size=1, max_size=6).map("".join).filter(lambda v: len(v) >= 16),
                min_size=1, max_size=8, unique=True))
def test_the_values_kept_from_a_column_are_those_kept_one_by_one(values):
    scanner = Scanner(CANARIES)
    if all(set(v) <= set("0123456789abcdef") for v in values):
        assert scanner._suspects(values) == [v for v in values if scanner._suspects([v])]
    else:  # a check character X: the column is not all hex, nothing is left out
        assert scanner._suspects(values) == values


def test_planted_identifiers_are_found_in_their_rows_as_by_the_full_scan(scanner):
    ids = [_hex(32) for _ in range(3000)]
    planted = {
        17: _hex(7) + _valid_id() + _hex(7),  # an ID number of nobody in particular
        400: "13800138000" + _hex(21),  # the canary mobile at the start
        1999: _hex(14) + "110101199003071234",  # the canary ID at the end
        2500: _hex(9) + "0adabea0" + _hex(15),  # the canary name, in hex letters (between digits: a name of
        # letters is not looked for inside a longer word, so a hex letter beside it would hide it from both scans)
    }
    for row, value in planted.items():
        ids[row] = value
    columns = {"id": ids, "patient": [_hex(32) for _ in range(3000)], "content_hash": [_hex(64) for _ in range(3000)]}
    fast = scanner.columns(columns, "t")
    full = _plain(scanner).columns(columns, "t")
    assert sorted((h.kind, h.where) for h in fast.hits) == sorted((h.kind, h.where) for h in full.hits)
    assert {h.where for h in fast.hits} >= {f"t.id[row {row}]" for row in planted}
    assert fast.rows == full.rows == 3000


def test_a_column_that_is_not_all_long_lowercase_hex_is_scanned_whole(scanner):
    for column in (["ABCDEF0123456789ABCD"],  # upper case is not ours
                   [_hex(32), "13800138000"],  # one value is not hex of 16+ characters
                   [_hex(32), _hex(8)],
                   [_hex(32), _hex(32) + " "],
                   ["Zhang San", _hex(32)]):
        assert scanner._suspects(column) == column


def test_a_value_of_hex_lines_is_no_hex_value(scanner):
    """A line break inside a value is a separator to the detector: an ID number or a canary split
    across it is found, so such a value is scanned like any text (found by a review)."""
    split = [_hex(7) + _valid_id()[:9] + "\n" + _valid_id()[9:] + _hex(7),  # an ID number cut 9 + 9
             "ccccccccccc13800\n138000ddddddddddd",  # the canary mobile
             "fffffffffff0571880\n01234fffffffffff"]  # the canary landline
    for value in split:
        column = [_hex(32), value, _hex(32)]
        assert scanner._suspects(column) == column
        found = scanner.columns({"id": column}, "t").hits
        assert [h.where for h in found] == ["t.id[row 1]"], value


# ---- the same scan of an Arrow column (Scanner.arrow: the sink's scan and the checks' re-reads) ----

_cells = st.one_of(
    st.none(),
    st.lists(_pieces, min_size=1, max_size=6).map("".join),
    st.sampled_from(["", "ABCDEF0123456789ABCD", "0123456789abcdef\n0123456789abcdef", "0123456789abcdef ", "Zhang San"]),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_cells, min_size=0, max_size=10), st.booleans())
def test_an_arrow_column_keeps_the_values_the_python_list_keeps(values, chunked):
    """_arrow_suspects finds in Arrow what hex_suspects finds in the column's distinct values: the
    same values, in the same order, None left out (and a list not all hex kept whole)."""
    from hub.leakscan import _arrow_suspects

    scanner = Scanner(CANARIES)
    column = pa.chunked_array([values[:3], values[3:]], pa.string()) if chunked else pa.array(values, pa.string())
    expected = scanner._suspects(list(dict.fromkeys(v for v in values if v is not None)))
    assert _arrow_suspects(column, scanner.known) == expected


def _plain_hex(n: int) -> str:
    """Random hex holding no canary form and no run of 17 digits (an ID number's by chance)."""
    while any(form in (value := _hex(n)) for form in ("adabea", "beaada")) or re.search("[0-9]{17}", value):
        pass
    return value


def test_planted_identifiers_in_an_arrow_table_are_found_in_their_rows(scanner):
    """The table scan finds what the scan of the same values as Python lists finds, named by row id."""
    n = 3000
    ids = [_plain_hex(32) for _ in range(n)]
    hashes = [_plain_hex(64) for _ in range(n)]
    hashes[5] = _hex(20) + _valid_id() + _hex(26)
    patients = [None if i % 7 == 0 else _plain_hex(32) for i in range(n)]
    patients[700] = _hex(9) + "13800138000" + _hex(12)
    notes = ["ok"] * n
    notes[2999] = "call 13800138000"
    table = pa.table({"id": ids, "patient": patients, "content_hash": hashes, "note": notes,
                      "count": pa.array(range(n), pa.int64())})
    fast = scanner.arrow(table, "t")
    listed = _plain(scanner).columns({"id": ids, "patient": patients, "content_hash": hashes, "note": notes,
                                      "count": [str(i) for i in range(n)]}, "t", ids=ids)
    assert sorted((h.kind, h.where) for h in fast.hits) == sorted((h.kind, h.where) for h in listed.hits)
    assert {h.where for h in fast.hits} == {f"t.content_hash[id={ids[5]}]", f"t.patient[id={ids[700]}]",
                                            f"t.note[id={ids[2999]}]"}
    assert fast.rows == n


def test_tens_of_thousands_of_canaries_still_scan_a_hex_column():
    """The hex forms of the known values are matched by RE2 alternations of a bounded size: one
    alternation of ~40,000 ID-number forms is more than RE2 compiles (a review found the sink then
    refused every publication)."""
    draw = random.Random(7)  # varied IDs: RE2 folds the common prefixes of similar ones
    ids = [_valid_id(birth=f"{draw.randint(1940, 2010)}{draw.randint(1, 12):02d}{draw.randint(1, 28):02d}",
                     area=f"{draw.randint(110000, 659999)}", seq=f"{draw.randint(0, 999):03d}") for _ in range(45_000)]
    ids = [v for v in ids if not v.endswith("X")]
    scanner = Scanner(frozenset(ids))
    column = [_plain_hex(32) for _ in range(50)] + [_plain_hex(5) + ids[-1] + _plain_hex(9)]
    found = scanner.arrow(pa.table({"id": column}), "t").hits
    assert [h.where for h in found] == [f"t.id[id={column[-1]}]"]


def test_a_dictionary_encoded_column_is_scanned_by_its_values(scanner, tmp_path):
    """A Parquet file may store a column dictionary-encoded (an insider rewriting a published file, or
    another writer): the scan reads its values, as it reads a plain column's."""
    import pyarrow.parquet as pq

    notes = pa.array(["ok", "call 13800138000", "ok"]).dictionary_encode()
    path = tmp_path / "part.parquet"
    pq.write_table(pa.table({"id": [_plain_hex(32) for _ in range(3)], "note": notes}), path)
    assert pa.types.is_dictionary(pq.read_table(path).schema.field("note").type)
    found = scanner.files([path]).hits
    assert [h.kind for h in found] == ["canary"] and found[0].where.startswith(f"{path}.note[id=")


def test_text_stored_as_bytes_is_scanned_as_text(scanner, tmp_path):
    """A published file rewritten with its text as a binary column (UTF-8, or not quite) is read as the
    text a reader would decode: a number in it is found, named by row."""
    import pyarrow.parquet as pq

    rows = [_plain_hex(32) for _ in range(3)]
    for notes, kind in ((pa.array([b"ok", "电话 13800138000".encode(), None], pa.binary()), "canary"),
                        (pa.array([b"ok", b"\xff" + "身份证 ".encode() + _valid_id().encode(), b"ok"], pa.large_binary()), "resident-id")):
        path = tmp_path / f"{kind}.parquet"
        pq.write_table(pa.table({"id": rows, "note": notes}), path)
        found = scanner.files([path]).hits
        assert [(h.kind, h.where) for h in found] == [(kind, f"{path}.note[id={rows[1]}]")]
