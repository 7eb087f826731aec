"""Mapping files are validated on load, with errors naming file, line and field."""

from __future__ import annotations

import shutil

import pytest

from hub.mapping.spec import load_mapping
from hub.yamlio import ConfigError
from tests.conftest import REPO

BASE = """\
mapping: broken
system: LIS
terminology:
  items: terminology/lab_items_vendor_a.json
resources:
  - resource: Observation
    from: lab_result
    key: [result_id]
    elements:
      status: final
{extra}
"""


def _write(tmp_path, extra: str):
    shutil.copytree(REPO / "mappings" / "terminology", tmp_path / "terminology", dirs_exist_ok=True)
    path = tmp_path / "broken.yaml"
    path.write_text(BASE.format(extra=extra), encoding="utf-8")
    return path


def _error(tmp_path, extra: str) -> ConfigError:
    with pytest.raises(ConfigError) as exc:
        load_mapping(_write(tmp_path, extra))
    return exc.value


def test_unknown_fhir_element_names_line_and_field(tmp_path):
    err = _error(tmp_path, "      valueQuantiti: {column: x}")
    assert err.line == 11
    assert err.field == "Observation.valueQuantiti"
    assert "broken.yaml:11" in str(err)


def test_unknown_option(tmp_path):
    err = _error(tmp_path, "      issued: {column: t, typo: dateTime}")
    assert err.line == 11 and "unknown option 'typo'" in str(err)


def test_undeclared_terminology(tmp_path):
    err = _error(tmp_path, "      code: {codeable: item_code, map: nosuch}")
    assert "nosuch" in str(err) and err.line == 11


def test_two_sources_on_one_line(tmp_path):
    err = _error(tmp_path, "      issued: {column: t, const: x}")
    assert "exactly one of" in str(err)


def test_unknown_type(tmp_path):
    err = _error(tmp_path, "      issued: {column: t, type: datetime}")
    assert "dateTime" in err.expected


def test_choice_element_takes_only_a_datatype_the_choice_has(tmp_path):
    err = _error(tmp_path, "      value[x]: {column: v, type: decimal}")
    assert err.line == 11 and "valueDecimal" in err.problem and "valueQuantity" in err.expected
    err = _error(tmp_path, "      value[x]: {reference_range: v}")
    assert "cannot fill a choice element" in err.problem and "lab_value" in err.expected


def test_yaml_syntax_error_names_file(tmp_path):
    path = _write(tmp_path, "      issued: {column: [")
    with pytest.raises(ConfigError) as exc:
        load_mapping(path)
    assert str(path) in str(exc.value)


def test_unknown_source_column_is_reported_when_compiled(tmp_path, keys):
    import sqlalchemy as sa

    from hub.mapping.compile import CompiledBlock
    from hub.mapping.run import mapped_batches
    from hub.sources.sql import SourceSchema

    path = _write(tmp_path, "      issued: {column: no_such_column, type: dateTime}")
    mapping = load_mapping(path)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'src.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE lab_result (result_id INTEGER PRIMARY KEY, result_time TEXT)")
    compiled = CompiledBlock(mapping, mapping.blocks[0], "x", keys)
    with pytest.raises(ConfigError) as exc:
        list(mapped_batches(compiled, engine, SourceSchema(engine)))
    assert "no_such_column" in str(exc.value) and "result_time" in exc.value.expected


# -- the constructs of issue 13: each refused on load with file, line and field ----------------

HEADER = """\
mapping: broken
system: LIS
{header}
resources:
  - resource: Observation
    from: lab_result
    key: [result_id]
{block}    elements:
      status: final
{extra}
"""


def _header_error(tmp_path, header: str = "", block: str = "", extra: str = "") -> ConfigError:
    path = tmp_path / "broken.yaml"
    path.write_text(HEADER.format(header=header, block=block, extra=extra), encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_mapping(path)
    assert str(path) in str(exc.value)
    return exc.value


def test_two_digit_year_format_without_pivot_is_refused(tmp_path):
    err = _header_error(tmp_path, header='date_formats: ["%m/%d/%y"]')
    assert err.line == 3 and err.field == "date_formats" and "gives no pivot" in err.problem and "pivot" in err.expected


@pytest.mark.parametrize(("header", "problem"), [
    ('datetime_formats: [{format: "%Y-%m-%d", pivot: 1930}]', "no two-digit year"),
    ('date_formats: [{format: "%m/%d/%y", pivot: 30}]', "is not a year"),
    ('date_formats: ["%Q-%m"]', "is not a date format"),
    ("timezone: Mars/Olympus", "neither an offset nor a time zone name"),
    ("timezone: CST", "neither an offset nor a time zone name"),
    ("date_bounds: {not_after: tomorrow}", "not a date or now plus a margin"),
])
def test_bad_header_options_are_refused(tmp_path, header, problem):
    err = _header_error(tmp_path, header=header)
    assert err.line == 3 and problem in err.problem


def test_iana_time_zone_is_accepted(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(HEADER.format(header="timezone: Asia/Shanghai", block="", extra=""), encoding="utf-8")
    assert str(load_mapping(path).timezone) == "Asia/Shanghai"


@pytest.mark.parametrize(("extra", "field", "problem"), [
    ("      issued: {column: t, type: dateTime, not_after: soon}", "Observation.issued.not_after", "not a date or now plus a margin"),
    ("      issued: {column: t, not_before: 1900-01-01}", "Observation.issued", "applies to date and dateTime lines"),
    ("      issued: {column: t, type: dateTime, not_before_birth: 3}", "Observation.issued.not_before_birth", "is not true or a column"),
    ("      value[x]: {lab_value: v, absent: {HOLD: later}}", "Observation.value[x].absent.HOLD", "not a data-absent-reason code"),
    ("      value[x]: {lab_value: v, absent: {HOLD: {reason: unknown, status: void}}}", "Observation.value[x].absent.HOLD.status", "is not a status"),
    ("      value[x]: {lab_value: v, comparators: {ABOVE: '>>'}}", "Observation.value[x].comparators", "not a map of words to comparators"),
    ("      value[x]: {lab_value: v, thousands: '.'}", "Observation.value[x].thousands", "not a thousands separator"),
    ("      code: {codeable: c, thousands: ','}", "Observation.code", "thousands does not apply to a codeable line"),
    ("      code: {codeable: c, transform: [{replace: '(a', with: x}]}", "Observation.code.transform[0].replace", "not a valid regular expression"),
    ("      code: {codeable: c, transform: [{replace: '(a)', with: '\\2'}]}", "Observation.code.transform[0].with", "refers to group '2'"),
    ("      code: {codeable: c, transform: [{pad: 0}]}", "Observation.code.transform[0].pad", "is not a width"),
    ("      code: {codeable: c, transform: [{split: ',', index: x}]}", "Observation.code.transform[0].index", "is not a whole number"),
    ("      code: {codeable: c, transform: [{upper: true}]}", "Observation.code.transform[0]", "names 0 steps"),
    ("      code: {codeable: c, transform: [{picture: '999'}]}", "Observation.code.transform[0].picture", "is not a picture"),
    ("      code: {codeable: c, required: maybe}", "Observation.code", "is not true or false"),
    ("      issued: {column: t, required: code}", "Observation.issued", "is not true or false"),
    ("      value[x]: {first_of: [{lab_value: v}]}", "Observation.value[x]", "not a list of alternatives"),
    ("      value[x]: {first_of: [{quantity: v}, {first_of: []}]}", "Observation.value[x].first_of[1]", "nests first_of"),
    ("      value[x]: {first_of: [{quantity: v}, {range: v}], thousands: ','}", "Observation.value[x]", "thousands does not apply to a first_of line"),
    ("      value[x]: {first_of: [{quantity: v}, {column: v, type: decimal}]}", "Observation.value[x]", "valueDecimal"),
    ("      issued: {concat: [d], type: dateTime}", "Observation.issued", "is not a list of columns"),
    ("      issued: {column: 't; x', type: dateTime}", "Observation.issued", "is not a column"),
])
def test_bad_element_options_are_refused(tmp_path, extra, field, problem):
    err = _header_error(tmp_path, extra=extra)
    assert err.line == 10 and err.field == field and problem in err.problem


@pytest.mark.parametrize(("block", "field", "problem"), [
    ("    where: {status: {like: 'x%'}}\n", "Observation.where.status.like", "unknown condition 'like'"),
    ("    where: {status: {in: []}}\n", "Observation.where.status.in", "is not a list of values"),
    ("    where: {status: {is_null: maybe}}\n", "Observation.where.status.is_null", "is not true or false"),
    ("    where: {other.status: 1}\n", "Observation.where.other.status", "names a table the block does not read"),
    ("    where: {status: {ge: {col: x}}}\n", "Observation.where.status.ge", "is not a value or {column: <column>}"),
    ("    occurrence: {order_by: []}\n", "Observation.occurrence.order_by", "is not a list of columns"),
    ("    occurrence: {order_by: [t], as: result_id}\n", "Observation.occurrence.as", "is not a new column name"),
])
def test_bad_block_options_are_refused(tmp_path, block, field, problem):
    err = _header_error(tmp_path, block=block)
    assert err.field == field and problem in err.problem and err.line >= 5


@pytest.mark.parametrize(("query", "problem"), [
    ("DELETE FROM lab_result", "does not start with SELECT or WITH"),
    ("SELECT * FROM lab_result; DROP TABLE lab_result", "has a semicolon"),
    ("SELECT * FROM lab_result;", "has a semicolon"),
    ("WITH gone AS (DELETE FROM lab_result RETURNING *) SELECT * FROM gone", "uses DELETE"),
    ("SELECT * INTO backup FROM lab_result", "uses INTO"),
    ("SELECT * FROM lab_result -- hidden", "has a comment"),
    ("SELECT * FROM lab_result /* x */", "has a comment"),
    ("SELECT nextval('s'), * FROM lab_result", "uses NEXTVAL"),
    ("SELECT * FROM lab_result FOR UPDATE", "uses UPDATE"),
    ("SELECT 'unterminated FROM lab_result", "unterminated quote"),
])
def test_query_that_is_not_a_single_read_only_select_is_refused(tmp_path, query, problem):
    text = HEADER.format(header="", block="", extra="").replace("    from: lab_result\n", f'    from: {{as: results, query: "{query}"}}\n')
    path = tmp_path / "broken.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_mapping(path)
    assert exc.value.line == 6 and exc.value.field == "Observation.from.query" and problem in exc.value.problem


def test_words_inside_quotes_do_not_count_against_a_query():
    from hub.mapping.spec import check_query

    assert check_query("SELECT * FROM lab_result WHERE note <> 'drop; delete -- /*' AND \"update\" = 1") is None
    assert check_query("with x as (select 1 as a) select a from x") is None
