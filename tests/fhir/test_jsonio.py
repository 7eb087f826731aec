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


def test_a_string_cannot_forge_the_decimal_marker():
    forged = {"valueString": "\u0001dec:1", "note": "\u0001dec:12345678901234567"}
    assert loads(dumps(forged)) == forged


def test_the_fast_encoder_writes_what_the_standard_library_writes():
    """orjson writes compact text; the standard library (indent=None path of old) is the reference."""
    import json
    from pathlib import Path

    from hub.fhir.jsonio import _MARK_RE, _default

    def reference(doc):
        return _MARK_RE.sub(r"\1", json.dumps(doc, default=_default, ensure_ascii=False, separators=(",", ":"), sort_keys=True))

    data = Path(__file__).parents[1] / "data"
    docs = [loads(line) for f in sorted(data.glob("*/expected/*.ndjson")) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    docs += [{"a": "\u2028\u2029\x00\x1f\x7f\"\\/é中𝄞", "b": [1.5, 1e16, 0.1 + 0.2, -0.0, Decimal("1.50"), Decimal("-1E-7")],
              "c": {"z": None, "y": True, "A": 2**63 - 1}}]
    assert len(docs) > 50
    for doc in docs:
        assert dumps(doc) == reference(doc)


def test_what_the_fast_encoder_refuses_is_still_written():
    assert dumps({"n": 2**70}) == '{"n":1180591620717411303424}'


def test_the_published_bytes_are_the_text_in_utf8():
    """dump_bytes (what the workers publish and send) is dumps in UTF-8: decimals, markers, the fallback too."""
    from pathlib import Path

    from hub.fhir.jsonio import content_hash, dump_bytes

    data = Path(__file__).parents[1] / "data"
    docs = [loads(line) for f in sorted(data.glob("*/expected/*.ndjson")) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    docs += [{"a": "\u2028\u2029\x00\x1f\"\\中𝄞", "b": [Decimal("1.50"), Decimal("NaN"), Decimal("-1E-7")], "c": "\u0001dec:1"},
             {"n": 2**70, "t": "张三"}]
    for doc in docs:
        assert dump_bytes(doc) == dumps(doc).encode()
        assert content_hash(dump_bytes(doc)) == content_hash(dumps(doc))


def test_the_published_bytes_hold_only_their_length():
    """orjson writes into a buffer of a few KB and hands it back as it is; the workers keep each resource
    until its flush (20,000 a table), so what dump_bytes returns must hold its length and no more."""
    import tracemalloc

    import orjson

    from hub.fhir.jsonio import dump_bytes

    doc = {"resourceType": "Observation", "id": "a" * 32, "valueString": "结果" * 200}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [dump_bytes(doc) for _ in range(200)]
        grown = tracemalloc.get_traced_memory()[0] - before
        raw = [orjson.dumps(doc) for _ in range(200)]
        grown_raw = tracemalloc.get_traced_memory()[0] - before - grown
    finally:
        tracemalloc.stop()
    assert grown < len(kept) * (len(kept[0]) + 200)
    assert grown_raw > 2 * grown  # what the copy is for (if orjson starts returning exact sizes, the copy can go)
    assert len(raw) == len(kept)
