"""Rulesets are validated on load with file, line and field."""

from __future__ import annotations

import pytest

from deid.ruleset import load_ruleset
from hub.yamlio import ConfigError

RULE = """\
ruleset: t
version: "1"
rules:
  - element: DE02.01.039.00
    name: name
    category: personal attribute
    level: 4
    paths: [{path}]
    action: {{recognition: {action}}}
"""


def _load(tmp_path, path="Patient.name", action="drop"):
    f = tmp_path / "r.yaml"
    f.write_text(RULE.format(path=path, action=action), encoding="utf-8")
    return load_ruleset(f, "recognition")


def test_valid_rule_loads(tmp_path):
    assert _load(tmp_path).rules[0].path == "Patient.name"


def test_unknown_action(tmp_path):
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, action="scramble")
    assert exc.value.line == 9 and "scramble" in str(exc.value)


def test_path_not_in_fhir(tmp_path):
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, path="Patient.nmae")
    assert exc.value.line == 8 and "nmae" in str(exc.value)


def test_unknown_resource_type(tmp_path):
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, path="Patientt.name")
    assert "Patientt" in str(exc.value)


def test_pseudonymize_needs_a_key_purpose(tmp_path):
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, action="pseudonymize")
    assert "key" in exc.value.field
