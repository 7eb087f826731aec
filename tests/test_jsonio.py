"""Lossless resource JSON."""

from __future__ import annotations

from decimal import Decimal

from hub.fhir.jsonio import dumps, loads


def test_decimal_precision_is_kept():
    text = dumps({"resourceType": "Observation", "valueQuantity": {"value": Decimal("1.50")}})
    assert '"value":1.50' in text
    assert str(loads(text)["valueQuantity"]["value"]) == "1.50"


def test_strings_that_look_like_markers_survive():
    assert loads(dumps({"a": "dec:1.0", "b": Decimal("-0.010")})) == {"a": "dec:1.0", "b": Decimal("-0.010")}


def test_output_is_canonical():
    assert dumps({"b": 1, "a": "中文"}) == '{"a":"中文","b":1}'
