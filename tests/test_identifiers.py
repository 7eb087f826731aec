"""Identifier detection: resident ID numbers (18 and 15 digits), mobiles, landlines and a record's
known values, in every evasive form we know of, and no false positives on clinical numbers."""

from __future__ import annotations

import datetime as dt
import random
import re
import unicodedata

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hub.identifiers import (
    Found,
    KnownValues,
    find_identifiers,
    find_mobile_numbers,
    find_resident_ids,
    is_valid_legacy_resident_id,
    is_valid_resident_id,
    plausible_division_code,
    redact_identifiers,
    resident_id_check_char,
)
from hub.identifiers import _luhn_check_digit as luhn

ID = "110101199003074610"
ID_X = "11010119900307002X"
LEGACY = "110101900307461"  # the 15-digit form of ID (no century, no check digit)
FULLWIDTH = str.maketrans("0123456789Xx ", "０１２３４５６７８９ＸＸ\u3000")
LOINC_CODES = re.compile(r"(?<![0-9-])([0-9]{3,5})-([0-9])(?![0-9-])")
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_id(region: str, born: dt.date, seq: int) -> str:
    first17 = f"{region}{born:%Y%m%d}{seq:03d}"
    return first17 + resident_id_check_char(first17)


def kinds(text: str, **kw) -> list[tuple[str, str, str]]:
    """(kind, the original substring found, normalised value) of every finding."""
    return [(f.kind, text[f.start:f.end], f.value) for f in find_identifiers(text, **kw)]


# ---- the validators ---------------------------------------------------------------------

@pytest.mark.parametrize("number", ["110101199003074610", "11010119900307002X", "11010119900307002x"])
def test_valid_check_digits(number):
    assert is_valid_resident_id(number)


@pytest.mark.parametrize("number", ["110101199003074611", "11010119900307002Y", "1101011990030746", "", None, "A10101199003074610"])
def test_invalid_numbers(number):
    assert not is_valid_resident_id(number)


def test_a_random_number_with_a_matching_check_digit_but_no_real_birth_date_is_not_an_id():
    first17 = "39936931392054492"  # a snapshot id, not a date in digits 7-14
    assert not is_valid_resident_id(first17 + resident_id_check_char(first17))


def test_a_birth_date_in_the_future_is_not_an_id():
    tomorrow = dt.date.today() + dt.timedelta(days=1)
    assert not is_valid_resident_id(make_id("110101", tomorrow, 1))
    assert is_valid_resident_id(make_id("110101", dt.date.today(), 1))


def test_check_char_computation():
    assert resident_id_check_char("11010119900307461") == "0"
    assert resident_id_check_char("11010119900307002") == "X"


def test_legacy_ids_need_a_division_code_and_a_real_date():
    assert is_valid_legacy_resident_id(LEGACY)
    assert not is_valid_legacy_resident_id("110101900231461")  # 31 February
    assert not is_valid_legacy_resident_id("990101900307461")  # no province 99
    assert not is_valid_legacy_resident_id("11010190030746")


def test_division_codes_come_from_the_table_with_permits_and_foreigners_cards():
    assert plausible_division_code("110101") and plausible_division_code("330110")
    assert plausible_division_code("330199")  # a county code newer than the table: the prefecture is known
    assert plausible_division_code("810000") and plausible_division_code("830000")
    assert plausible_division_code("933840")  # foreigner's card: 9 + province 33 + nationality
    assert not plausible_division_code("000000") and not plausible_division_code("209901")
    assert not plausible_division_code("119901")  # Beijing has no prefecture 99


# ---- the simple interfaces keep working --------------------------------------------------

def test_find_in_text_only_valid_numbers():
    text = "患者身份证110101199003074610，另一号码110101199003074611"
    assert find_resident_ids(text) == ["110101199003074610"]


def test_mobile_numbers_with_prefixes():
    assert find_mobile_numbers("电话13800138000或+8613900139000，座机057187654321") == ["13800138000", "+8613900139000"]


def test_redaction():
    assert redact_identifiers("id 110101199003074610 tel 13800138000") == "id [id-number] tel [phone]"


# ---- resident ID numbers, however written -------------------------------------------------

ID_FORMS = [
    "110101199003074610",
    "110101 19900307 4610",
    "110101-19900307-4610",
    "110101\u201319900307\u20144610",  # en and em dashes
    "110101\u2010199003074610",  # the Unicode hyphen
    "110101_19900307_4610",
    "110101/19900307/4610",
    "1101 0119 9003 0746 10",
    "1 1 0 1 0 1 1 9 9 0 0 3 0 7 4 6 1 0",
    "110101\u200b199003\u200b074610",  # zero-width spaces
    "110101\u00ad19900307\u20604610",  # soft hyphen, word joiner
    "110101\xa019900307\xa04610",  # no-break spaces
    "１１０１０１１９９００３０７４６１０",  # full-width digits
    "１１０１０１\u3000１９９００３０７\u3000４６１０",  # and ideographic spaces
    "١١٠١٠١١٩٩٠٠٣٠٧٤٦١٠",  # Arabic-Indic digits
    "一一〇一〇一一九九〇〇三〇七四六一〇",  # Chinese numerals
    "110101 1990-03-07 4610",  # the birth date written as a date
]


@pytest.mark.parametrize("form", ID_FORMS)
@pytest.mark.parametrize("before,after", [("", ""), ("身份证号：", "，男"), ("SFZ", ""), ("ID:", "abc"), ("patient id ", " ok")])
def test_an_18_digit_id_is_found_however_written(form, before, after):
    text = before + form + after
    assert kinds(text) == [("resident-id", form, ID)]
    assert redact_identifiers(text) == before + "[id-number]" + after


@pytest.mark.parametrize("form", ["11010119900307002X", "11010119900307002x", "11010119900307002 X", "1101011990 0307 002-x", "１１０１０１１９９００３０７００２ｘ"])
def test_an_id_ending_in_x_is_found_with_its_check_character(form):
    assert kinds(f"证件{form}。") == [("resident-id", form, ID_X)]


@pytest.mark.parametrize("text,found", [
    ("110101199003074610 123", "110101199003074610"),  # digits appended after a space
    ("110101199003074610123", "110101199003074610"),  # ... or straight on
    ("99110101199003074610", "110101199003074610"),  # ... or before
    ("000 110101 19900307 4610 77", "110101 19900307 4610"),
])
def test_an_id_inside_a_longer_digit_run_is_still_found(text, found):
    assert kinds(text) == [("resident-id", found, ID)]


@pytest.mark.parametrize("form", ["110101900307461", "110101 900307 461", "110101-900307-461", "１１０１０１９００３０７４６１", "SFZ110101900307461"])
def test_a_legacy_15_digit_id_is_found(form):
    text = f"旧身份证{form}号"
    assert [(k, v) for k, _, v in kinds(text)] == [("resident-id", LEGACY)]
    assert redact_identifiers(text) == "旧身份证" + ("SFZ" if form.startswith("SFZ") else "") + "[id-number]号"


def test_numbers_that_fail_the_id_checks_are_not_ids():
    assert kinds("110101199003074611") == []  # wrong check digit
    bad_place = "999999199003070000"
    assert kinds(bad_place[:17] + resident_id_check_char(bad_place[:17])) == []  # no such division
    assert kinds(make_id("110101", dt.date(1890, 1, 1), 3)) == []  # born before 1900


@st.composite
def evasive_ids(draw):
    region = draw(st.sampled_from(["110101", "330106", "330110", "340104", "440305", "653130", "810000"]))
    born = draw(st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date.today()))
    number = make_id(region, born, draw(st.integers(0, 999)))
    seps = st.sampled_from(["", "", "", " ", "-", "\u3000", "\u200b", "_", "/", "\u2014", "  "])
    written = "".join(c + draw(seps) for c in number[:-1]) + number[-1]
    if draw(st.booleans()):
        written = written.translate(FULLWIDTH)
    if number.endswith("X") and draw(st.booleans()):
        written = written[:-1] + "x"
    return number, written


noise = st.lists(st.sampled_from(list("患者的电话是，。ab :;℃①…㎏×⁹/L()[]\n") + ["mmol/L", "5.6", "E11.9"]), max_size=8).map("".join)


@SETTINGS
@given(evasive_ids(), noise, noise)
def test_property_planted_ids_are_found_and_redaction_keeps_everything_else(planted, before, after):
    number, written = planted
    text = f"{before}，{written}。{after}"  # punctuation, so no digit of the noise joins the number
    found = [f for f in find_identifiers(text) if f.kind == "resident-id"]
    assert any(f.value == number and text[f.start:f.end] == written for f in found)
    assert redact_identifiers(text) == f"{before}，[id-number]。{after}"


# ---- mobiles and landlines -----------------------------------------------------------------

MOBILE_FORMS = [
    "13812345678", "138 1234 5678", "138-1234-5678", "138\u20131234\u20135678", "1 3 8 1 2 3 4 5 6 7 8",
    "1381234\u200b5678", "１３８１２３４５６７８", "１３８\u3000１２３４\u3000５６７８", "一三八一二三四五六七八",
    "+8613812345678", "+86 138 1234 5678", "+86-138-1234-5678", "(+86) 138 1234 5678", "0086 138 1234 5678",
    "008613812345678", "86 13812345678", "＋８６ １３８１２３４５６７８",
]


@pytest.mark.parametrize("form", MOBILE_FORMS)
@pytest.mark.parametrize("before,after", [("", ""), ("电话", "。"), ("tel", ""), ("Tel:", "ext"), ("联系人手机：", " 张")])
def test_a_mobile_is_found_however_written(form, before, after):
    text = before + form + after
    assert kinds(text) == [("mobile", form, "13812345678")]
    assert redact_identifiers(text) == before + "[phone]" + after


LANDLINE_FORMS = [
    ("0571-87654321", "057187654321"), ("0571 8765 4321", "057187654321"), ("(0571)87654321", "057187654321"),
    ("(0571) 8765-4321", "057187654321"), ("057187654321", "057187654321"), ("０５７１－８７６５４３２１", "057187654321"),
    ("+86 571 8765 4321", "057187654321"), ("+86-571-87654321", "057187654321"), ("+86 (0)571 87654321", "057187654321"),
    ("0086 571 87654321", "057187654321"), ("0086 (0)571 8765 4321", "057187654321"), ("010-62345678", "01062345678"), ("(010) 6234 5678", "01062345678"),
    ("+86 10 6234 5678", "01062345678"), ("020 8765 4321", "02087654321"), ("0755-83456789", "075583456789"),
]


@pytest.mark.parametrize("form,value", LANDLINE_FORMS)
def test_a_landline_is_found_however_written(form, value):
    text = f"座机{form}，转803"
    assert kinds(text) == [("landline", form, value)]
    assert redact_identifiers(text) == "座机[phone]，转803"


def test_a_landline_needs_a_real_area_code_and_subscriber_length():
    assert kinds("0123-4567890") == []  # no area code 0123
    assert kinds("0755-2345678") == []  # Shenzhen numbers have 8 digits


@SETTINGS
@given(st.sampled_from("3456789"), st.text(alphabet="0123456789", min_size=9, max_size=9),
       st.lists(st.sampled_from(["", "", " ", "-", "\u3000", "\u200b", "_"]), min_size=10, max_size=10),
       st.sampled_from(["", "+86", "+86 ", "0086-", "86 "]), noise, noise)
def test_property_planted_mobiles_are_found(second, rest, seps, prefix, before, after):
    number = "1" + second + rest
    written = prefix + "".join(d + s for d, s in zip(number, seps + [""], strict=True))
    # Known limit: a number cut into two LOINC-shaped codes with valid check digits
    # ("1701-2 0000-0") reads as a list of LOINC codes.
    assume(len(LOINC_CODES.findall(written)) < 2 or not all(luhn(a) == b for a, b in LOINC_CODES.findall(written)))
    text = f"{before}：{written}。{after}"
    assert redact_identifiers(text) == f"{before}：[phone]。{after}"


# ---- known values of the record -----------------------------------------------------------

RECORD = KnownValues(["张三", "Zhang San", "MRN-00123", "+86 139 0013 9000", "0571-87654321", ID, "浙江省杭州市西湖区文三路12号3幢", "李", "1234"])


@pytest.mark.parametrize("text", [
    "张三", "张 三", "张　三", "张\u200b三", "张·三", "zhangsan", "ZHANG SAN", "Zhang-San", "Zhāng Sān", "san zhang", "ｚｈａｎｇ ｓａｎ",
    "MRN-00123", "mrn00123", "MRN 00123", "ＭＲＮ００１２３",
    "87654321", "8765 4321",
    "文三路12号3幢", "文三路１２号３幢",
])
def test_known_values_are_found_however_written(text):
    assert redact_identifiers(f"记录：{text}。", RECORD) == "记录：[identifier]。"


def test_a_known_phone_is_found_as_a_known_value_also_inside_a_longer_run():
    assert kinds("手机 139-0013-9000", known=RECORD) == [("known", "139-0013-9000", "13900139000")]
    assert find_identifiers("手机 139-0013-9000", RECORD)[0].detected == "mobile"
    assert redact_identifiers("手机 139-0013-9000", RECORD) == "手机 [phone]"  # named for what it is
    assert redact_identifiers("手机 1390013900099", RECORD) == "手机 [identifier]99"
    assert redact_identifiers("手机 139-0013-9000") == "手机 [phone]"


def test_overlapping_candidates_are_redacted_together():
    # "1 3301062000" reads as a mobile, "3301062000 01010005" is an ID: no digit of either survives
    number = make_id("330106", dt.date(2000, 1, 1), 0)
    text = f"床号1 {number[:10]} {number[10:]}"
    assert kinds(text) == [("resident-id", text[2:], number)]


def test_a_known_id_number_is_found_in_its_legacy_form_and_reported_as_known():
    # a known value outranks the detector's kind: the leak scan never exempts a canary
    assert kinds(f"旧证{LEGACY}", known=RECORD) == [("known", LEGACY, LEGACY)]
    assert kinds(f"证{ID}", known=RECORD) == [("known", ID, ID)]
    assert kinds(f"新证 {ID}", known=KnownValues([LEGACY])) == [("known", ID, ID)]


@pytest.mark.parametrize("text", [
    "linagliptin 5 mg", "zhangsanfeng", "MRN001234", "0.0012345", "21002345", "1234 mg", "李", "李先生",
    "Hemoglobin [Mass/volume] in Blood",
])
def test_known_values_do_not_match_inside_other_words_or_numbers_and_tiny_values_are_ignored(text):
    record = KnownValues(["Li Na", "Zhang San", "MRN-00123", "002345", "1234", "李"])
    assert redact_identifiers(text, record) == text


def test_known_values_repr_and_found_repr_never_show_the_values():
    assert "张三" not in repr(KnownValues(["张三"]))
    f = find_identifiers(f"id {ID}")[0]
    assert isinstance(f, Found) and ID not in repr(f)


def test_known_values_can_be_passed_as_plain_strings():
    assert redact_identifiers("患者张三", ("张三",)) == "患者[identifier]"
    assert redact_identifiers("患者张三", ["张三", None]) == "患者[identifier]"


# ---- spans are in the original text, and everything else stays byte-identical ------------

def test_spans_map_back_through_characters_that_fold_to_several():
    text = "①②℃… ㎏ ⑴ 电话１３８ １２３４ ５６７８，×10⁹/L"
    [f] = find_identifiers(text)
    assert text[f.start:f.end] == "１３８ １２３４ ５６７８"
    assert redact_identifiers(text) == "①②℃… ㎏ ⑴ 电话[phone]，×10⁹/L"


@SETTINGS
@given(st.text(max_size=40), st.text(max_size=40))
def test_property_text_around_an_identifier_is_kept_exactly(before, after):
    text = f"{before} 138\u3000１２３４-5678 {after}"
    out = redact_identifiers(text)
    assert "[phone]" in out
    # digits touching the number may belong to it (a country code 86, a longer run)
    assume(not re.search(r"\d\W*$", unicodedata.normalize("NFKC", before)))
    assume(not re.match(r"^\W*\d", unicodedata.normalize("NFKC", after)))
    if not find_identifiers(before + " ") and not find_identifiers(" " + after):
        assert out == f"{before} [phone] {after}"


# ---- no false positives on clinical numbers ---------------------------------------------------

CLEAN = [
    "5.60", "Glucose 5.6 mmol/L (3.9-6.1)", "血压 130/85 mmHg，心率 72 次/分", "0.13812345678",
    "2024-03-05T08:30:00+08:00", "2024-03-05 08:30:00", "随访 2024-05-12 2024-03-06 2024-04-01", "2024/05/12 2024/03/06",
    "1990-03-07", "effective 2023-01-01T00:00:00Z to 2024-12-31T23:59:59.999+08:00",
    "×10⁹/L", "10*9/L", "10^12/L", "mL/min/{1.73_m2}", "mm[Hg]", "umol/L", "10.3 10*3/uL",
    "LOINC 2345-7", "2345-7 2951-2 2823-3 2075-0 1558-6 17856-6 4548-4 2160-0 33914-3", "1558-6 17856-6",
    "E11.9", "I10 E11.9 N18.3 E78.5 K21.0", "ICD-10 E11.65; Z79.4",
    "snapshot 3993693139205449212", "3055729675574597004", "8744736658048236929",
    "Hemoglobin [Mass/volume] in Blood", "血红蛋白", "体温36.5℃", "一般情况良好，二十三岁，第一次住院",
    "NDC 0002-8215-01", "version 1.2.3.4", "192.168.10.254",
]


@pytest.mark.parametrize("text", CLEAN)
@pytest.mark.parametrize("document", [False, True])
def test_clinical_numbers_are_not_identifiers(text, document):
    assert find_identifiers(text, document=document) == []
    assert redact_identifiers(text) == text


def test_random_19_digit_snapshot_ids_are_not_ids():
    rng = random.Random(20261130)
    ids = [str(rng.randrange(10**18, 2**63)) for _ in range(20_000)]
    assert [s for s in ids if find_identifiers(s, document=True)] == []


def test_document_mode_skips_digits_inside_hex_tokens_but_not_id_numbers():
    pseudonym = "3f9a13812345678b0c4d5e6f7a8b9c0d"  # a 32-char hex pseudonym with a mobile-shaped run
    doc = f'{{"id": "{pseudonym}", "subject": {{"reference": "Patient/{pseudonym}"}}}}'
    assert find_identifiers(doc, document=True) == []
    assert [f.kind for f in find_identifiers(doc)] == ["mobile", "mobile"]  # a plain string is scrubbed
    planted = f'{{"id": "ab{ID}cdef"}}'
    assert [f.value for f in find_identifiers(planted, document=True)] == [ID]
    upper = '{"note": "ABCDEF13812345678ABCDEF"}'  # not our (lower-case) hex
    assert [f.kind for f in find_identifiers(upper, document=True)] == ["mobile"]


def test_document_mode_finds_identifiers_in_json_strings():
    doc = '{"valueString": "手机 138 1234 5678，身份证 110101 19900307 4610", "code": "2345-7", "value": 5.60}'
    assert [f.kind for f in find_identifiers(doc, document=True)] == ["mobile", "resident-id"]
