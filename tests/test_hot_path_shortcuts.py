"""The per-row hot path's shortcuts give exactly what the plain computation gives.

Each shortcut (benchmarks/hotpath.py, docs/performance.md) is compared with the computation it
replaces, on generated inputs shaped like the ones that matter: digits cut by every kind of
separator, Chinese numerals, full-width and invisible characters, known values of a record.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deid.keys import Keyring
from hub import identifiers as ids
from hub.fhir.jsonio import dumps
from hub.mapping import compile as comp
from hub.mapping.values import _strptime

PIECES = ["13812345678", "138 1234 5678", "0571-87654321", "330106198001011234", "33010619800101123x",
          "110101800101002", "M1000123", "张伟", "Zhang Wei", "2024-10-27T08:29:00+08:00", "ext", "分机", "+86",
          '{"text":"', '"}', "6a0e9eefa4a06b64f2b7c91fe625da5c", "一三八一二三四五六七八", "１３８", "\u200b", "\u3000"]
CHARS = "0123456789 -_/()~*|:+#<>[]{}.,xXeEtT分机转一二三两幺①℃İß\u200b\ufe0f\u3000\u30fb\u3001张伟文三路号abcdefABC\"'"
texts = st.lists(st.one_of(st.sampled_from(PIECES), st.text(CHARS, max_size=12)), max_size=8).map("".join)
KNOWN = ("张伟", "13812345678", "330106198001011234", "M1000123", "浙江省杭州市西湖区文三路12号3幢", "Zhang Wei", "0571-87654321")


def _reference_fold(text: str) -> str:
    """The fold as written before: a regex split into ASCII and other runs, the runs through the table."""
    parts = re.split(r"([^\x00-\x7f]+)", text)
    return "".join(p.lower() if i % 2 == 0 else p.translate(ids._TABLE) for i, p in enumerate(parts))


@settings(max_examples=400, deadline=None)
@given(texts)
def test_the_one_pass_fold_gives_the_fold_its_compact_form_and_its_bytes(text):
    folded, compact, data = ids._folds(text)
    expected = _reference_fold(text)
    assert folded == ids._fold(text) == expected
    assert compact == ids._KNOWN_STRIP.sub("", expected).encode("utf-8", "surrogatepass")
    assert data == expected.encode("utf-8", "surrogatepass")


@settings(max_examples=400, deadline=None)
@given(texts)
def test_the_number_prefilter_never_hides_a_run(text):
    """_find skips _RUN_RE when the bytes test finds no 11 glued digits: it must never skip a match."""
    folded = ids._fold(text)
    for word, seps in ids._WORD_SEPS:
        folded = folded.replace(word, seps)
    if ids._RUN_RE.search(folded):
        assert ids._may_hold_numbers(ids._fold(text).encode("utf-8", "surrogatepass"))


@pytest.mark.parametrize(("text", "passes"), [
    ("13812345678", True), ("138ext12345678", True), ("1ext3ext8ext1ext2ext3ext4ext5ext6ext7ext8", True),
    ("0571 extext 87654321", True), ("(0571) 8765 4321 ext 12", True), ("ext13812345678", True),
    ("1381234567e8", False), ("2024-05-12t08:30:00", False), ("text 1381234 next 5678", False), ("138 ext 12345678", True),
])
def test_the_number_prefilter_lets_digits_joined_by_ext_through_and_stops_dates(text, passes):
    """ext joins digits (a landline's extension); t (a timestamp's) and e (a decimal's exponent) do not."""
    folded = ids._fold(text)
    for word, seps in ids._WORD_SEPS:
        folded = folded.replace(word, seps)
    assert bool(ids._RUN_RE.search(folded)) == passes
    assert ids._may_hold_numbers(ids._fold(text).encode()) == passes


@settings(max_examples=300, deadline=None)
@given(texts, st.booleans(), st.booleans())
def test_the_memo_of_short_texts_changes_no_finding(text, document, with_known):
    known = ids.known_values_of(KNOWN) if with_known else ids.KnownValues()
    folded = ids._fold(text)
    direct = ids._find(text, folded, known.spans(folded), document)  # no memo, no pair test
    ids._PLAIN[document].pop(text, None)
    assert ids.find_identifiers(text, known, document=document) == direct  # filling the memo
    assert ids.find_identifiers(text, known, document=document) == direct  # from the memo


def test_a_memoised_text_still_finds_the_known_values_of_another_record():
    ids.find_identifiers("患者张伟复诊")
    assert [f.kind for f in ids.find_identifiers("患者张伟复诊", ("张伟",))] == ["known"]
    assert ids.find_identifiers("患者张伟复诊", ("李娜",)) == []


def test_the_memos_are_dropped_when_the_date_changes(monkeypatch):
    ids.find_identifiers("一段文字")
    assert ids._PLAIN[False]
    monkeypatch.setattr(ids, "_today_ends", 0.0)
    ids.find_identifiers("x")
    assert "一段文字" not in ids._PLAIN[False] and ids._today_ends > 0


FORMATS = ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y%m%d%H%M%S", "%Y%m%d%H%M", "%Y%m%d", "%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]


@settings(max_examples=500, deadline=None)
@given(st.datetimes(min_value=dt.datetime(1, 1, 1)), st.sampled_from(FORMATS), st.lists(st.tuples(st.integers(0, 30), st.sampled_from("0123456789 :-Tt３")), max_size=2))
def test_the_fixed_width_date_reading_is_strptimes(when, fmt, edits):
    text = list(when.strftime(fmt).rjust(len(fmt), "0"))
    for i, c in edits:
        if i < len(text):
            text[i] = c
    text = "".join(text)
    for f in FORMATS:
        try:
            expected = dt.datetime.strptime(text, f)
        except ValueError:
            expected = None
        try:
            got = _strptime(text, f)
        except ValueError:
            got = None
        assert got == expected, (text, f)


def test_a_decimal_json_number_is_written_as_before():
    assert dumps({"v": Decimal("7.30"), "w": [Decimal("1E+2"), Decimal("-0.000")]}) == '{"v":7.30,"w":[1E+2,-0.000]}'
    nan = dumps({"v": Decimal("NaN")})  # not a JSON number: stays the marked string it always was
    assert nan.startswith('{"v":"\\u0001dec') and nan.endswith(':NaN"}')


def _reference_prune(node):
    if isinstance(node, dict):
        out = {k: _reference_prune(v) for k, v in node.items()}
        return {k: v for k, v in out.items() if v not in (None, {}, [], "")}
    if isinstance(node, list):
        out = [_reference_prune(v) for v in node]
        return [v for v in out if v not in (None, {}, [], "")]
    return node


leaves = st.one_of(st.none(), st.just(""), st.just(0), st.just(False), st.integers(), st.text(max_size=3),
                   st.decimals(allow_nan=False, places=2), st.just({}), st.just([]))
trees = st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text("abc", max_size=2), inner, max_size=4)), max_leaves=20)


@settings(max_examples=500, deadline=None)
@given(trees)
def test_pruning_keeps_what_it_kept(tree):
    assert comp._prune(tree) == _reference_prune(tree)
    assert repr(comp._prune(tree)) == repr(_reference_prune(tree))


def test_the_reference_memo_keeps_keys_that_are_equal_but_written_differently_apart():
    """1, 1.0 and True are equal keys of a dict, but "1", "1.0" and "True" are other source keys."""
    from hub.mapping.spec import Element

    keys = Keyring(bytes(range(32)))
    block = type("B", (), {"table": "t"})()
    compiled = comp.CompiledBlock.__new__(comp.CompiledBlock)
    compiled.keys, compiled.institution, compiled.block = keys, "inst", block
    compiled.columns, compiled._index = [], {}
    el = Element(path="subject", kind="reference", source="Patient", options={"key": ["pid"]}, line=1)
    fn = compiled._c_reference(el)
    refs = [fn((v,))["reference"] for v in (1, 1.0, True, "1", 1, Decimal("1.0"), "1")]
    expected = [f"Patient/{comp.resource_id(keys, 'inst', 'patient', [v])}" for v in (1, 1.0, True, "1", 1, Decimal("1.0"), "1")]
    assert refs == expected
    assert len(set(refs)) == 3  # key texts "1", "1.0" and "True"


_RUN_WITHOUT_LOOKAHEAD = re.compile(
    rf"[0-9](?:[{ids._WIDE_CHARS}x转轉]*+[0-9]){{10,}}+(?:[{ids._WIDE_CHARS}转轉]{{0,16}}x)?")


@settings(max_examples=600, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(PIECES), st.text(CHARS, max_size=14), st.text("0123456789 -x转~", max_size=20)),
                max_size=10).map("".join))
def test_the_run_lookahead_changes_no_match(text):
    """_RUN_RE's lookahead only turns away digits no match starts at: the matches are those of the
    pattern written without it."""
    folded = ids._fold(text)
    for word, seps in ids._WORD_SEPS:
        folded = folded.replace(word, seps)
    assert [m.span() for m in ids._RUN_RE.finditer(folded)] == [m.span() for m in _RUN_WITHOUT_LOOKAHEAD.finditer(folded)]


def _reference_spans(known: ids.KnownValues, folded: str) -> list[tuple[int, int, str]]:
    """KnownValues.spans as written before: the forms looked for with str.find in the compact text."""
    compact = ids._KNOWN_STRIP.sub("", folded)
    kept = [m.start() for m in ids._KNOWN_KEPT.finditer(folded)]
    out = []
    for key, _encoded, before, after in known._keys:
        i = compact.find(key)
        while i >= 0:
            start, end = kept[i], kept[i + len(key) - 1] + 1
            if ids._edge_free(folded, start - 1, -1, before) and ids._edge_free(folded, end, 1, after):
                out.append((start, end, key))
            i = compact.find(key, i + 1)
    return out


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(PIECES + list(KNOWN) + ["浙江省杭州市", "西湖区", "张 伟", "ZHANG-WEI", "\ud800"]),
                          st.text(CHARS, max_size=12)), max_size=10).map("".join))
def test_known_values_found_in_the_utf8_compact_text_are_those_of_the_text(text):
    """The forms are looked for in the compact text's UTF-8 bytes: the same spans, at the same
    characters, as str.find in the compact text, with Chinese and other wide characters before them."""
    known = ids.known_values_of(KNOWN)
    folded, compact, _data = ids._folds(text)
    assert known.spans(folded, compact) == known.spans(folded) == _reference_spans(known, folded)


def test_a_long_text_with_many_known_values_is_read_in_one_pass():
    """Every occurrence is found, at its characters, and the search stays linear: the positions come from
    the decoded text once a form is found (a review measured 12 s for this text when each hit decoded the
    bytes before it)."""
    text = "患者张伟，" * 64_000
    known = ids.known_values_of(("张伟",))
    folded, compact, _data = ids._folds(text)
    spans = known.spans(folded, compact)
    assert len(spans) == 64_000 and spans[1] == (7, 9, "张伟") and spans == _reference_spans(known, folded)
