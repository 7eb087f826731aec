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


def _load_text(tmp_path, text: str, zone: str = "recognition"):
    f = tmp_path / "s.yaml"
    f.write_text(text, encoding="utf-8")
    return load_ruleset(f, zone)


STRINGS = """\
ruleset: t
version: "1"
strings:
  policy:
{entry}
rules:
  - {{element: t.code, category: health status, level: 2, paths: [Observation.code], action: {{recognition: keep}}}}
"""


def test_strings_policy_loads_per_zone(tmp_path):
    text = STRINGS.format(entry="    Reference.display: {recognition: redact, research: redact}\n    string: {recognition: scrub}")
    rec, res = _load_text(tmp_path, text), _load_text(tmp_path, text, "research")
    assert rec.strings.decide("Coding", "display", "string")[0].name == "scrub"
    assert rec.strings.decide("Reference", "display", "string") == (rec.strings.actions["Reference.display"], "Reference.display")
    assert res.strings.decide("Coding", "display", "string")[0].name == "redact"  # a zone not given: redacted
    assert rec.strings.decide("Annotation", "text", "markdown")[1] == "default"


@pytest.mark.parametrize(
    ("entry", "line", "words"),
    [
        ("    Coding.display: {recognition: keep}", 5, "'keep' is not a strings action"),
        ("    Codng.display: {recognition: scrub}", 5, "'Codng' is not a FHIR R4 datatype"),
        ("    Coding.dsplay: {recognition: scrub}", 5, "Coding has no element 'dsplay'"),
        ("    Coding.code: {recognition: scrub}", 5, "Coding.code is a code, not a string leaf"),
        ("    string: {recogniton: scrub}", 5, "unknown zone 'recogniton'"),
        ("    string: scrub", 5, "is not an action per zone"),
    ],
)
def test_strings_policy_errors_name_line_and_field(tmp_path, entry, line, words):
    with pytest.raises(ConfigError) as exc:
        _load_text(tmp_path, STRINGS.format(entry=entry))
    assert exc.value.line == line and words in str(exc.value) and exc.value.field.startswith("strings.policy.")


def test_structural_leaves_must_be_string_elements(tmp_path):
    text = STRINGS.format(entry="    string: {recognition: scrub}").replace("strings:\n", "strings:\n  structural: [Coding.system]\n")
    with pytest.raises(ConfigError) as exc:
        _load_text(tmp_path, text)
    assert exc.value.field == "strings.structural" and "Coding.system is a uri" in str(exc.value)


def test_unknown_top_level_section_is_an_error_but_leak_scan_is_left_to_its_reader(tmp_path):
    base = STRINGS.format(entry="    string: {recognition: scrub}")
    with pytest.raises(ConfigError) as exc:
        _load_text(tmp_path, base + "string:\n  policy: {}\n")
    assert exc.value.field == "string" and exc.value.line == 8
    assert _load_text(tmp_path, base + "leak_scan:\n  exempt_code_systems: []\n").rules


def test_every_segment_of_a_path_is_checked_against_fhir(tmp_path):
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, path="Patient.name.fmaily")
    assert exc.value.line == 8 and "HumanName has no element 'fmaily'" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, path="Patient.birthDate.year")
    assert "primitive" in str(exc.value)
    assert _load(tmp_path, path="Patient.name.given").rules[0].path == "Patient.name.given"
