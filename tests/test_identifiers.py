"""Identifier detection: resident ID numbers (18 and 15 digits), mobiles, landlines and a record's
known values, in every evasive form we know of, and no false positives on clinical numbers."""

from __future__ import annotations

import datetime as dt
import json
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
    # Known limit: a number cut into a LOINC-shaped code with a valid check digit ("1420-9 000000")
    # reads as a LOINC code.
    assume(not any(luhn(a) == b for a, b in LOINC_CODES.findall(written.replace("\u200b", ""))))
    text = f"{before}：{written}。{after}"
    assert redact_identifiers(text) == f"{before}：[phone]。{after}"


# ---- invisible characters, Chinese numerals, wide separators ------------------------------

INVISIBLE = [chr(cp) for cp in range(0x110000) if unicodedata.category(chr(cp)) in ("Cf", "Mn", "Me")]
NAMED_INVISIBLE = [
    "\ufe0e", "\ufe0f", "\ufe00", "\U000e0100", "\u034f", "\u3164", "\u115f", "\u1160", "\uffa0", "\u180e",
    "\u2060", "\u2061", "\u2062", "\u2063", "\u2064", "\ufeff", "\u200b", "\u200c", "\u200d", "\u200e",
    "\u200f", "\u00ad", "\u2800", "\u20e3", "\u202e",
]


@pytest.mark.parametrize("c", NAMED_INVISIBLE, ids=lambda c: f"U+{ord(c):04X}")
def test_invisible_characters_inside_a_number_are_ignored(c):
    mobile = c.join("13812345678")
    assert kinds(f"电话{mobile}。") == [("mobile", mobile, "13812345678")]
    spaced = f"138{c}{c} 1234{c}5678"  # invisible characters next to a separator, too
    assert kinds(f"电话{spaced}。") == [("mobile", spaced, "13812345678")]
    id_number = c.join(ID)
    assert kinds(f"证{id_number}号") == [("resident-id", id_number, ID)]
    assert redact_identifiers(f"证{id_number}号", RECORD) == "证[id-number]号"
    assert redact_identifiers(f"患者张{c}三", RECORD) == "患者[identifier]"


def test_every_format_combining_and_enclosing_mark_is_ignored_between_digits():
    find_identifiers("".join(INVISIBLE))  # fold them all once, so the test is quick
    missed = []
    for c in INVISIBLE:
        text = f"tel 1{c}38{c}1234{c}{c}5678{c}。"
        found = find_identifiers(text)
        written = text[4:-1] if unicodedata.category(c) in ("Mn", "Me") else text[4:-2]  # a mark on the last digit goes with it
        if [(f.kind, f.value, text[f.start:f.end]) for f in found] != [("mobile", "13812345678", written)]:
            missed.append(f"U+{ord(c):04X}")
    assert missed == []
    assert len(INVISIBLE) > 2000


def test_keycap_emoji_digits_are_digits():
    keycaps = "".join(d + "\ufe0f\u20e3" for d in "19187452685")
    assert kinds(f"call {keycaps}!") == [("mobile", keycaps, "19187452685")]


def test_spans_map_back_through_characters_that_fold_to_nothing_and_to_several():
    text = "①\u200b⑩℃\ufe0f 电话\u200b1\u200b3\ufe0f8 ⑫\u034f34 5678\u0301\u200b，×10⁹/L\u3164"
    [f] = find_identifiers(text)
    assert text[f.start:f.end] == "1\u200b3\ufe0f8 ⑫\u034f34 5678\u0301"  # with the mark on its last digit
    assert redact_identifiers(text) == "①\u200b⑩℃\ufe0f 电话\u200b[phone]\u200b，×10⁹/L\u3164"


CHINESE_DIGITS = {
    "零": "0", "〇": "0", "○": "0", "一": "1", "幺": "1", "壹": "1", "二": "2", "两": "2", "兩": "2", "贰": "2",
    "貳": "2", "三": "3", "叁": "3", "參": "3", "叄": "3", "四": "4", "肆": "4", "五": "5", "伍": "5", "六": "6",
    "陆": "6", "陸": "6", "七": "7", "柒": "7", "八": "8", "捌": "8", "九": "9", "玖": "9",
}


@pytest.mark.parametrize("numeral,digit", CHINESE_DIGITS.items())
def test_every_chinese_numeral_is_a_digit(numeral, digit):
    text = f"电话一三{numeral * 9}。"
    assert kinds(text) == [("mobile", text[2:-1], "13" + digit * 9)]


@pytest.mark.parametrize("form", [
    "幺九幺八七四五二六八五", "一九一八七四五两六八五", "幺玖幺捌柒肆伍贰陆捌伍", "壹玖壹捌柒肆伍貳陸捌伍", "一九一 八七四五 二六八五",
    "幺九幺-8745-两六八五",
])
def test_spoken_and_financial_numerals_are_found(form):
    assert kinds(f"手机{form}") == [("mobile", form, "19187452685")]


@pytest.mark.parametrize("glued", ["第一", "两", "〇", "三"])
def test_a_numeral_glued_to_a_number_in_other_digits_does_not_hide_it(glued):
    assert kinds(f"联系人{glued}13812345678") == [("mobile", "13812345678", "13812345678")]
    assert kinds(f"{glued}{ID}") == [("resident-id", ID, ID)]


WIDE = ["~", "～", "〜", "*", "＊", "|", "｜", ":", "：", "、", "+", "＋", "#", "＃", "/", "\\", "[", "]", "【", "】", "（", "）",
        "［", "］", "《", "》", "<", ">", "{", "「", "』", "〔", "     ", "\xa0" * 5, "\u3000" * 6, " \n\n\t ", "转", "轉",
        "ext", " ext ", "EXT", "分机", "x", " x ", "~~", " | ", "】【", "\u200b:\u200b"]


@pytest.mark.parametrize("sep", WIDE)
def test_wide_separators_join_the_groups_of_a_mobile(sep):
    for written in (f"191{sep}8745{sep}2685", f"191{sep}87452685", f"1918745{sep}2685", f"1918{sep}7452{sep}685",
                    f"+86{sep}191{sep}8745{sep}2685", f"0086{sep}19187452685"):
        assert kinds(f"电话：{written}。") == [("mobile", written, "19187452685")], written


@pytest.mark.parametrize("sep", WIDE)
def test_wide_separators_join_the_groups_of_an_id_number(sep):
    for written in (f"430102{sep}19560719{sep}7083", f"4301{sep}0219{sep}5607{sep}1970{sep}83",
                    f"430102{sep}1956{sep}0719{sep}7083", f"43010219560719708{sep}3"):
        assert kinds(f"身份证：{written}。") == [("resident-id", written, "430102195607197083")], written
    legacy = f"430102{sep}560719{sep}708"
    assert kinds(f"身份证：{legacy}。") == [("resident-id", legacy, "430102560719708")]
    with_x = f"110101{sep}19900307{sep}002x"
    assert kinds(f"证件{with_x}。") == [("resident-id", with_x, ID_X)]


@pytest.mark.parametrize("sep", WIDE)
def test_wide_separators_join_area_code_and_subscriber_of_a_landline(sep):
    for written in (f"0571{sep}87654321", f"0571{sep}8765{sep}4321", f"+86{sep}571{sep}87654321", f"010{sep}6234{sep}5678"):
        found = kinds(f"座机：{written}。")
        assert [(k, w) for k, w, _ in found] == [("landline", written)], written


@pytest.mark.parametrize("text,expected", [
    ("0571-87654321转803", "[phone]转803"),
    ("0571-87654321 ext 803", "[phone] ext 803"),
    ("13812345678转8031", "[phone]转8031"),
    ("138 1234 5678 x12", "[phone] x12"),
    ("[191]8745[2685]", "[[phone]]"),
    ("【191】8745【2685】", "【[phone]】"),
    ("(0571) 8765 4321", "[phone]"),
])
def test_an_extension_or_a_bracket_stays_and_the_number_goes(text, expected):
    assert redact_identifiers(text) == expected


@pytest.mark.parametrize("text", [
    "1~3~8~1~2~3~4~5~6~7~8",  # wide separators only between groups of the shapes people write
    "13:45 2024-5-12", "13:45:12 2024/5/1", "1|38|1234|5678", "191:87:45:26:85",
])
def test_wide_separators_do_not_join_numbers_in_other_shapes(text):
    assert find_identifiers(text) == []


@pytest.mark.parametrize("text", ["191.8745.2685", "191．8745．2685", "191,8745,2685", "430102.19560719.7083"])
def test_decimal_points_and_commas_are_not_separators(text):
    # Known limit: '.' and ',' cut every clinical value ("1.3812345678", "13,812"), so they end a number.
    assert find_identifiers(text) == []


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
    "linagliptin 5 mg", "zhangsanfeng", "0.0012345", "1234 mg", "李", "李先生", "1650 mL",
    "Hemoglobin [Mass/volume] in Blood",
])
def test_known_words_do_not_match_inside_other_words_and_tiny_values_are_ignored(text):
    record = KnownValues(["Li Na", "Zhang San", "MRN-00123", "002345", "1234", "李", "陆伍"])
    assert redact_identifiers(text, record) == text


@pytest.mark.parametrize("text,expected", [
    ("M1000001191~8745~2685", "[identifier][phone]"),  # the MRN, and the mobile glued on is read again
    ("M10000011918", "[identifier]1918"),
    ("99M1000001", "99[identifier]"),
    ("MRN001234", "[identifier]4"),  # a longer number holding the MRN: over-redaction, by choice
    ("21002345", "21[identifier]"),  # a 6-digit numeric value is found glued to digits too
    ("0.1002345", "0.1[identifier]"),
    ("m1000001abc", "[identifier]abc"),
])
def test_a_known_value_glued_to_digits_is_still_found(text, expected):
    record = KnownValues(["M1000001", "MRN-00123", "002345"])
    assert redact_identifiers(text, record) == expected


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
    assume(not re.search(r"\d(?:\W|ext|x|分[机機])*$", unicodedata.normalize("NFKC", before).casefold()))
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
    "120/80 mmHg", "Na 140 K 4.1 Cl 101", "ref 3.5-5.5", "4548-4, 2345-7", "4548-4、2345-7、2951-2", "13:45:12 18:30:00",
    "2024-03-05 13:45:12+08:00 2024-03-06 18:30:00+08:00", "08:00|12:00|18:00|22:00", "每日1~3次，每次1~2片", "1:100 1:1000 1:10000",
    "BP 138/88 mmHg | HR 72 | RR 18 | SpO2 98%", "[1] [2] [3] [4] [5] [6] [7] [8] [9] [10] [11]", "《2024》第3版", "13:45 2024-5-12",
    "10*9/L 10*12/L", "第1、2、3、4、5、6、7、8、9、10、11、12次", "2024年3月5日 13:45", "2024-03-05 08:30:00 ~ 2024-03-06 08:30:00",
    "1:10000 1999-04-08 01:00", "Na 138 2024-03-05", "1990-1-10 60/30 mmHg", "17856-6 60/100 mmHg",
]


@pytest.mark.parametrize("text", CLEAN)
@pytest.mark.parametrize("document", [False, True])
def test_clinical_numbers_are_not_identifiers(text, document):
    assert find_identifiers(text, document=document) == []
    assert redact_identifiers(text) == text


OBSERVATION = json.dumps({
    "resourceType": "Observation", "id": "3f9a1c2b7e4d5a6f8b9c0d1e2f3a4b5c",
    "meta": {"versionId": "1", "lastUpdated": "2024-03-05T08:30:00+08:00"}, "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glucose [Moles/volume] in Serum or Plasma"}]},
    "subject": {"reference": "Patient/9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e"}, "effectiveDateTime": "2024-03-05 08:30:00",
    "issued": "2024-03-05T13:45:12.123+08:00", "valueQuantity": {"value": 5.6, "unit": "mmol/L", "code": "mmol/L"},
    "referenceRange": [{"low": {"value": 3.9}, "high": {"value": 6.1}, "text": "3.9~6.1"}],
    "component": [{"code": {"text": "4548-4, 2345-7、2951-2"}, "valueString": "120/80 mmHg | Na 140 K 4.1 Cl 101 | ref 3.5-5.5"}],
    "note": [{"text": "08:00|12:00|18:00 各1~2片，1:100稀释 [1] [2] 《2024》"}],
}, ensure_ascii=False)


@pytest.mark.parametrize("indent", [None, 2])
def test_a_fhir_observation_document_holds_no_identifier(indent):
    doc = json.dumps(json.loads(OBSERVATION), ensure_ascii=False, indent=indent)
    assert find_identifiers(doc, document=True) == []
    assert find_identifiers(doc) == []


def _value(draw, digits: int) -> str:
    return str(draw(st.integers(0, 10**digits - 1)))


@st.composite
def clinical_items(draw):
    """One piece of ordinary clinical text: a number with its unit, a date, a time, a range, a
    blood pressure, a ratio, a code."""
    year = draw(st.integers(1990, 2030))
    month, day = draw(st.integers(1, 12)), draw(st.integers(1, 28))
    hh, mm, ss = draw(st.integers(0, 23)), draw(st.integers(0, 59)), draw(st.integers(0, 59))
    decimal = f"{draw(st.integers(0, 999))}.{draw(st.integers(0, 99))}"
    pad = draw(st.sampled_from(["{:02d}", "{}"]))
    date = draw(st.sampled_from(["-", "/", "."])).join([str(year), pad.format(month), pad.format(day)])
    time_ = f"{hh:02d}:{mm:02d}" + draw(st.sampled_from(["", f":{ss:02d}", f":{ss:02d}+08:00", f":{ss:02d}.{draw(st.integers(0, 999)):03d}Z"]))
    loinc = draw(st.sampled_from(["2345-7", "4548-4", "2951-2", "2823-3", "17856-6", "1558-6", "33914-3"]))
    return draw(st.sampled_from([
        f"{draw(st.sampled_from(['Na', 'K', 'Cl', 'Glu', 'HbA1c', 'WBC', '血红蛋白', '肌酐']))} {draw(st.sampled_from([_value(draw, 3), decimal]))}"
        f"{draw(st.sampled_from([' mmol/L', ' g/L', '%', ' ×10⁹/L', ' umol/L', ' mg/dL', ' 10*9/L', '次/分']))}",
        f"{draw(st.integers(60, 220))}/{draw(st.integers(30, 130))} mmHg", date, time_, f"{date} {time_}", f"{date}T{time_}",
        f"{decimal}-{decimal}", f"{draw(st.integers(1, 9))}~{draw(st.integers(1, 20))}次", f"1:{draw(st.sampled_from(['10', '100', '1000', '10000']))}",
        f"ref {decimal}~{decimal}", f"({decimal}-{decimal})", loinc, f"{loinc}、{loinc}", "E11.9", "I10", f"第{draw(st.integers(1, 30))}天",
        f"Q{draw(st.integers(4, 12))}H", f"{draw(st.integers(1, 99))}岁", f"{draw(st.integers(100, 9999))} mL",
    ]))


clinical_seps = st.sampled_from([" ", "  ", "，", "、", "; ", " | ", "|", "\n", ": ", " ~ ", "\t", "；", "，\n", " / "])


@SETTINGS
@given(st.lists(st.tuples(clinical_items(), clinical_seps), min_size=1, max_size=12), st.booleans())
def test_property_ordinary_clinical_text_holds_no_identifier(items, document):
    text = "".join(item + sep for item, sep in items)
    assert find_identifiers(text, document=document) == []


@SETTINGS
@given(st.uuids(), st.uuids(), st.lists(clinical_items(), min_size=1, max_size=4), st.floats(0, 1000, allow_nan=False),
       st.datetimes(min_value=dt.datetime(1990, 1, 1), max_value=dt.datetime(2030, 12, 31)), st.booleans())
def test_property_fhir_observations_hold_no_identifier(rid, pid, texts, value, when, indent):
    doc = json.loads(OBSERVATION)
    doc["id"], doc["subject"]["reference"] = rid.hex, f"Patient/{pid.hex}"
    doc["effectiveDateTime"], doc["issued"] = when.isoformat(), f"{when:%Y-%m-%d %H:%M:%S}"
    doc["valueQuantity"]["value"] = value
    doc["component"][0]["valueString"] = " | ".join(texts)
    assert find_identifiers(json.dumps(doc, ensure_ascii=False, indent=2 if indent else None), document=True) == []


MOBILE_SHAPES = [(11,), (3, 8), (3, 4, 4), (7, 4), (4, 4, 3)]
ID_SHAPES = [(18,), (6, 8, 4), (6, 4, 4, 4), (4, 4, 4, 4, 2), (6, 12), (17, 1), (3, 3, 4, 4, 4)]
new_seps = st.sampled_from(WIDE + ["-", " ", "\u3000", "\u200b", "", "\ufe0f", "(", ")", "_"])


def _written(draw, number: str, shape: tuple[int, ...]) -> str:
    cuts = [sum(shape[:k]) for k in range(len(shape) + 1)]
    return "".join(number[a:b] + (draw(new_seps) if b < len(number) else "") for a, b in zip(cuts, cuts[1:], strict=False))


@SETTINGS
@given(st.data(), st.sampled_from(["", "+86 ", "0086", "+86~", "(+86)"]), noise, noise)
def test_property_planted_mobiles_with_wide_separators_are_found(data, prefix, before, after):
    number = "1" + data.draw(st.sampled_from("3456789")) + data.draw(st.text(alphabet="0123456789", min_size=9, max_size=9))
    written = prefix + _written(data.draw, number, data.draw(st.sampled_from(MOBILE_SHAPES)))
    text = f"{before}，{written}。{after}"
    assert redact_identifiers(text) == f"{before}，[phone]。{after}"
    assert [f.value for f in find_identifiers(text) if f.kind == "mobile"] == [number]


@SETTINGS
@given(st.data(), evasive_ids(), noise, noise)
def test_property_planted_ids_with_wide_separators_are_found(data, planted, before, after):
    number = planted[0]
    written = _written(data.draw, number, data.draw(st.sampled_from(ID_SHAPES)))
    text = f"{before}，{written}。{after}"
    assert redact_identifiers(text) == f"{before}，[id-number]。{after}"
    assert [f.value for f in find_identifiers(text)] == [number]


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


def test_the_hex_token_shortcut_keeps_what_a_chinese_numeral_or_full_width_digits_reveal():
    """_numbers_in_run leaves a run of fewer than 17 ASCII digits inside a hex token early; a run that a
    Chinese numeral cuts in two, or whose digits are written full width, is not such a run."""
    tail = "9a8d17082502775463f2dd78099"  # hex right after the number: the whole run reaches into a hex token
    glued = '{"a":"+86１３８１２３４５６７８两' + tail + '"}'  # 两 cuts the group: the mobile before it stands alone
    assert [(f.kind, f.value) for f in find_identifiers(glued, document=True)] == [("mobile", "13812345678")]
    in_hex = '{"a":"ab13812345678' + tail + '"}'  # the same digits inside the hex token: a pseudonym's digits
    assert find_identifiers(in_hex, document=True) == []
    sixteen = '{"id":"ab' + "1381234567812345" + 'cdef0123"}'  # 16 digits in hex: no 18-character ID either
    assert find_identifiers(sixteen, document=True) == []
    planted = '{"id":"ab' + ID + 'cdef0123"}'  # 17 digits and x (or 18): read as an ID, in hex too
    assert [f.value for f in find_identifiers(planted, document=True)] == [ID]


def test_document_mode_finds_identifiers_in_json_strings():
    doc = '{"valueString": "手机 138 1234 5678，身份证 110101 19900307 4610", "code": "2345-7", "value": 5.60}'
    assert [f.kind for f in find_identifiers(doc, document=True)] == ["mobile", "resident-id"]


def test_a_short_known_word_is_not_found_inside_a_hex_token():
    """A two-letter known value (a state, "CA") matched inside pseudonyms and quarantined rows."""
    assert find_identifiers('{"reference":"Patient/0a9ca0b1"}', ("CA",), document=True) == []
    assert [f.kind for f in find_identifiers("lives in CA 90210", ("CA",))] == ["known"]
    assert [f.kind for f in find_identifiers("Li Na, 3 tablets", ("Li Na",))] == ["known"]


@given(st.text())
def test_the_fast_compaction_removes_exactly_the_separators(text):
    """Known values are looked up in the text without separators; the fast path (bytes.translate
    when every separator is ASCII) must remove exactly what the separator pattern removes."""
    from hub.identifiers import _KNOWN_STRIP, _compact, _fold

    for t in (text, _fold(text)):
        assert _compact(t) == _KNOWN_STRIP.sub("", t).encode("utf-8", "surrogatepass")
