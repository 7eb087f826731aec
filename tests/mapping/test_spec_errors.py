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
    shutil.copytree(REPO / "mappings" / "terminology", tmp_path / "terminology")
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


def test_choice_element_needs_lab_value(tmp_path):
    err = _error(tmp_path, "      value[x]: {column: v}")
    assert "lab_value" in err.expected


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
