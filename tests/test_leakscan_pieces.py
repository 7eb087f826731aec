"""The leak scan of a column of resources judged on its distinct pieces between double quotes.

Scanner.columns asks identifiers.pieces_clean first: the column's joined text is cut at every '"',
each distinct piece scanned once, and the whole text is scanned only when the pieces hold a
finding. The promise: a column pieces_clean passes is one the whole-text scan finds nothing in
(whatever the quotes cut: numbers, hex tokens, an ID's check character, a known value), and a
planted identifier is found in its row exactly as before.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub import identifiers as ids
from hub import leakscan
from hub.fhir.jsonio import dumps
from hub.leakscan import _JOIN, Scanner

# What a quote may cut or stand beside: digits of a number, separators and prefixes that join a number's
# parts, a hex token, an ID's check character, marks, circled digits (their folding changes the length), full-width quotes.
PIECES = ['"', '"', '"', '\\"', "\uff02", '+"86', '("0571)', '."138', '0a9f3b"', '"deadbeef', '"x', 'x"', '"X',
          '\u0301"', '"\u20e3', "\u2460", "\u2469", "138", "1381234", "5678", "0571", "87654321", "110101", "19900307",
          "4514", "451x", "ext", "-", " ", ":", "{", "}", ",", "[", "]", "\u4e00", "\u4e09", "\u516b", "\u3007",
          "\uff11\uff13\uff18", "SFZ", "tel", "2024-05-12", "T08:30:00", "abcdef0123456789", ".", "\u5f20\u4e09", "zhang",
          "M100023", '"code":"', '"value":', '"system":"http://loinc.org"', "13", "8123", "45678", "0", "1", "2", "\n.\n"]
KNOWN = [(), ("\u5f20\u4e09", "13812345678"), ("M100023",), ("0571-87654321", "110101199003074514"), ('zh"ang', "san")]

texts = st.lists(st.one_of(st.sampled_from(PIECES), st.integers(0, 10**12).map(str)), max_size=25).map("".join)


@settings(max_examples=1500, deadline=None)
@given(st.lists(texts, min_size=1, max_size=4), st.sampled_from(KNOWN))
def test_a_column_passed_on_its_pieces_holds_nothing_the_whole_scan_finds(column, known_values):
    known = ids.known_values_of(known_values)
    if ids.pieces_clean(column, _JOIN, known):
        assert ids.find_identifiers(_JOIN.join(column), known, document=True) == []


@settings(max_examples=1000, deadline=None)
@given(st.lists(texts, min_size=1, max_size=4), st.sampled_from(KNOWN[:4]))
def test_what_a_text_holds_is_what_its_pieces_between_quotes_hold(column, known_values):
    """The invariant pieces_clean rests on, kept by every later change to the detector: the findings
    of a text are those of its pieces cut at '"', each read alone, in place (no finding holds a quote
    and no read beyond a number or a known value crosses one)."""
    known = ids.known_values_of(known_values)
    text = _JOIN.join(column)
    expected, offset = [], 0
    for piece in text.split('"'):
        expected += [(f.kind, f.start + offset, f.end + offset, f.value, f.detected)
                     for f in ids.find_identifiers(piece, known, document=True)]
        offset += len(piece) + 1
    assert [(f.kind, f.start, f.end, f.value, f.detected) for f in ids.find_identifiers(text, known, document=True)] == expected


@pytest.mark.parametrize("column", [
    ['{"telecom":"13812345678"}'],  # in one piece
    ['{"a":"1381234"}', '{"b":"0", "c":"13812345678"}'],  # in the second text
    ['{"note":"id 110101199003074514"}'],
    ['{"note":"\u4e00\u4e09\u516b\u4e00\u4e8c\u4e09\u56db\u4e94\u516d\u4e03\u516b"}'],  # Chinese numerals
    ['{"note":"\uff11\uff13\uff18\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18"}'],  # full-width digits
    ['{"id":"0a9f3b","note":"tel13812345678"}'],
    ['{"note":"\u2460\u2469 138 1234 5678"}'],  # circled numbers earlier in the piece move positions
    ['{"note":"(0571) 8765 4321"}'],
])
def test_a_column_with_an_identifier_is_never_passed_on_its_pieces(column):
    assert ids.find_identifiers(_JOIN.join(column), ids._NO_KNOWN, document=True)
    assert not ids.pieces_clean(column, _JOIN, ids._NO_KNOWN)


def test_a_known_value_holding_a_quote_sends_the_column_to_the_whole_scan():
    """Such a value can be found across two pieces: the pieces cannot tell, so they are not asked."""
    known = ids.known_values_of(('zh"ang san',))
    column = ['{"name":"zh"ang san"}']
    assert ids.find_identifiers(column[0], known, document=True)
    assert not ids.pieces_clean(column, _JOIN, known)


def test_numbers_cut_by_quotes_are_no_numbers_in_either_scan():
    column = ['{"a":"1381234","b":"5678"}', '{"c":"138"}', '{"d":"12345678"}']
    assert ids.find_identifiers(_JOIN.join(column), ids._NO_KNOWN, document=True) == []
    assert ids.pieces_clean(column, _JOIN, ids._NO_KNOWN)


def _observation(i: int, note: str = "normal") -> str:
    return dumps({"resourceType": "Observation", "id": f"{i:032x}", "status": "final",
                  "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glucose"}]},
                  "subject": {"reference": f"Patient/{i * 7919:032x}"}, "effectiveDateTime": f"2024-05-{i % 28 + 1:02d}T08:30:00+08:00",
                  "valueQuantity": {"value": i / 10, "unit": "mmol/L"}, "note": [{"text": note}]})


def test_a_planted_identifier_is_found_in_its_row_and_a_clean_column_is_not_scanned_whole(monkeypatch):
    scanned: list[int] = []
    detect = leakscan.detect
    monkeypatch.setattr(leakscan, "detect", lambda text, known: scanned.append(len(text)) or detect(text, known))
    scanner = Scanner(frozenset({"Zhang Sanfeng"}))
    clean = [_observation(i) for i in range(300)]
    assert scanner.columns({"resource": clean}, "t", ids=[str(i) for i in range(300)]).hits == []
    assert scanned == []  # passed on its pieces: the joined text was never scanned whole

    planted = list(clean)
    planted[117] = _observation(117, "call 138 1234 5678")
    planted[250] = _observation(250, "Zhang  Sanfeng")
    hits = scanner.columns({"resource": planted}, "t", ids=[str(i) for i in range(300)]).hits
    assert sorted((h.where, h.kind) for h in hits) == [("t.resource[id=117]", "mobile"), ("t.resource[id=250]", "canary")]
    assert scanned  # the whole text was scanned to place them
