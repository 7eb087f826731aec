"""Per-patient feature tables: the golden table on hand-made rows, units, windows, flags, and spec checks."""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
from pathlib import Path

import pytest

from hub.region import REPO_ROOT
from hub.trainset.build import cohort, labels, load_spec, per_patient
from hub.trainset.datasheet import class_balance, column_summaries, label_words
from hub.trainset.features import aggregate, load_units, matches, medication_flags, to_timestamp
from hub.yamlio import ConfigError

GOLDEN = REPO_ROOT / "tests" / "data" / "trainset" / "patient_matrix"
UTC = dt.UTC


def _cell(text: str, value):
    """Compare one expected CSV cell with a table value: empty is None, numbers to 4 decimals."""
    if text == "":
        return value is None
    if isinstance(value, bool):
        return text == str(value).lower()
    if isinstance(value, dt.datetime):
        return value == dt.datetime.fromisoformat(text)
    if isinstance(value, int | float):
        return math.isclose(value, float(text), abs_tol=5e-5)
    return str(value) == text


def test_golden_per_patient_table():
    spec = load_spec(GOLDEN / "spec.yaml")
    rows = json.loads((GOLDEN / "input" / "rows.json").read_text(encoding="utf-8"))["rows"]
    people = cohort(spec, rows)
    label_rows = labels(spec, rows, people)
    sch, table, info = per_patient(spec, rows, label_rows)
    with (GOLDEN / "expected" / "patients.csv").open(encoding="utf-8") as fh:
        expected = list(csv.DictReader(fh))
    assert [f.name for f in sch] == list(expected[0])  # the columns and their order
    assert [r["patient"] for r in table] == [e["patient"] for e in expected]
    for got, want in zip(table, expected, strict=True):
        wrong = {k: (got[k], v) for k, v in want.items() if not _cell(v, got[k])}
        assert not wrong, f"{got['patient']}: {wrong}"
    assert info["results_by_code_and_unit"] == json.loads((GOLDEN / "expected" / "results_by_code_and_unit.json").read_text())
    assert str(sch.field("label_time").type) == "timestamp[us, tz=UTC]"


def test_golden_datasheet_missingness_balance_and_words():
    spec = load_spec(GOLDEN / "spec.yaml")
    rows = json.loads((GOLDEN / "input" / "rows.json").read_text(encoding="utf-8"))["rows"]
    label_rows = labels(spec, rows, cohort(spec, rows))
    sch, table, _ = per_patient(spec, rows, label_rows)
    cols = column_summaries(table, sch)
    assert cols["glucose_14771_0_last_90d"]["missing_share"] == 0.5  # p2 has no glucose
    assert cols["glucose_14771_0_count_90d"]["missing_share"] == 0.0  # a count is 0, never missing
    assert cols["hba1c_4548_4_slope_365d"] == {"missing_share": 0.0, "present": 2, "mean": round((-2.006868 + 0.077840) / 2, 4),
                                                "min": -2.0069, "max": 0.0778}
    assert cols["med_insulin"] == {"missing_share": 0.0, "present": 2, "true": 1}
    assert cols["sex"]["values"] == {"female": 1, "male": 1}
    assert class_balance(list(label_rows.values())) == {"patients": 2, "labels_true": 1, "labels_false": 1, "label_rate": 0.5}
    assert label_words(spec.label) == "last HbA1c (LOINC 4548-4) of the patient is < 7.0 % (true) or not (false)"


def test_aggregates_and_slope_per_year():
    t0 = dt.datetime(2024, 1, 1, tzinfo=UTC)
    pts = [(t0 + dt.timedelta(days=365.25 * i / 2), v) for i, v in enumerate([1.0, 2.0, 3.0])]
    assert aggregate(list(reversed(pts))) == {"last": 3.0, "min": 1.0, "max": 3.0, "mean": 2.0, "count": 3, "slope": pytest.approx(2.0)}
    assert aggregate([]) == {"last": None, "min": None, "max": None, "mean": None, "count": 0, "slope": None}
    assert aggregate([(t0, 1.0), (t0, 2.0)])["slope"] is None  # no time between them: no slope


def test_timestamps_are_utc_and_partial_dates_start_their_period():
    assert to_timestamp("2024-09-29T08:00:00+08:00") == dt.datetime(2024, 9, 29, tzinfo=UTC)
    assert to_timestamp("2024-09-29T08:00:00+08:00").utcoffset() == dt.timedelta(0)
    assert to_timestamp("2024-03") == dt.datetime(2024, 3, 1, tzinfo=UTC)
    assert to_timestamp("1950") == dt.datetime(1950, 1, 1, tzinfo=UTC)
    assert to_timestamp(None) is None and to_timestamp("") is None


def test_code_groups_take_prefixes_and_ranges():
    assert matches("I13.900", ["I10-I15"]) and matches("I10.x00", ["I10-I15"]) and not matches("I16.0", ["I10-I15"])
    assert matches("N18.300", ["N18"]) and not matches("N19", ["N18"])
    assert matches("X-A10BA02", ["X-A10BA"])  # a hyphen in a code is not a range when the ends differ in length
    assert not matches(None, ["N18"])


def test_medication_active_window_is_half_open():
    lt = {"p": dt.datetime(2024, 6, 1, tzinfo=UTC)}
    rx = {"patient": "p", "code": "X-A10BA02", "status": "completed", "supply_days": 10}
    ends_at_label = {**rx, "authored": "2024-05-22T00:00:00Z"}  # 05-22 + 10 days = 06-01: over at the label time
    starts_at_label = {**rx, "authored": "2024-06-01T00:00:00Z"}
    assert medication_flags([ends_at_label], lt, {"m": ["X-A10BA"]})["p"] == {"med_m": False}
    assert medication_flags([starts_at_label], lt, {"m": ["X-A10BA"]})["p"] == {"med_m": True}


def _units(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "units.yaml"
    p.write_text(body, encoding="utf-8")
    return p


def test_unit_table_converts_and_rejects_what_it_cannot_check(tmp_path):
    table = load_units(REPO_ROOT / "trainsets" / "units" / "conversions.yaml")
    assert table.convert("14771-0", "mg/dL", 100) == pytest.approx(5.551)
    assert table.convert("14682-9", "mmol/L", 0.1) == pytest.approx(100)
    assert table.convert("14771-0", "mg/L", 100) is None and table.convert("14771-0", None, 5) is None
    bad = {
        "units:\n  - {code: a, from: mmol/L, to: umol/L, factor: 100}\n": ("units[0].factor", "factor 1000"),  # prefixes imply 1000
        "units:\n  - {code: a, from: x, to: y, factor: 1}\n  - {code: a, from: z, to: w, factor: 2}\n": ("units[1].to", "one canonical unit"),
        "units:\n  - {code: a, from: x, to: y, factor: -1}\n": ("units[0].factor", "factor > 0"),
        "units:\n  - {code: a, from: x, to: y}\n": ("units[0].factor", "is missing"),
        "units:\n  - {code: a, from: x, to: y, factor: 1, scale: 2}\n": ("units[0].scale", "not a field"),
        "units:\n  - {code: a, from: y, to: y, factor: 2}\n": ("units[0].factor", "factor 1"),
        "units:\n  - {code: a, from: x, to: y, factor: 2}\n  - {code: a, from: x, to: y, factor: 3}\n": ("units[1]", "given twice"),
    }
    for body, (field, words) in bad.items():
        with pytest.raises(ConfigError) as exc:
            load_units(_units(tmp_path, body))
        assert exc.value.field == field and words in str(exc.value) and "units.yaml:" in str(exc.value), str(exc.value)


def _spec(tmp_path: Path, change: tuple[str, str]) -> Path:
    text = (GOLDEN / "spec.yaml").read_text(encoding="utf-8").replace("../../../../trainsets/", str(REPO_ROOT / "trainsets") + "/")
    assert change[0] in text
    (tmp_path / "units.yaml").write_text((GOLDEN / "units.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    p = tmp_path / "spec.yaml"
    p.write_text(text.replace(*change), encoding="utf-8")
    return p


@pytest.mark.parametrize(("change", "field", "words"), [
    (("shape: per_patient", "shape: wide"), "shape", "long (one row per result) or per_patient"),
    (("codes: {hba1c: 4548-4, glucose: 14771-0}", "codes: {hba1c: 4548-4, ldl: 22748-8}"), "matrix.results.codes.ldl", "no canonical unit"),
    (("windows: [90, 365]", "windows: [90, -1]"), "matrix.results.windows", "positive"),
    (("    windows: [90, 365]\n", "    windows: [90, 365]\n    aggregates: [last, median]\n"), "matrix.results.aggregates", "some of last"),
    (("demographics: {view: patients}", "demographics: {view: patients, sex: sex}"), "matrix.demographics.sex", "not in view patients"),
    (("hypertension: [I10-I15]", "hypertension: [I15-I10]"), "matrix.comorbidities.groups.hypertension", "runs backwards"),
    (("view: medications\n", "view: meds\n"), "matrix.medications.view", "not declared"),
    (("units: units.yaml", "units: nowhere.yaml"), "matrix.units", "not found"),
])
def test_spec_errors_name_file_line_and_field(tmp_path, change, field, words):
    with pytest.raises(ConfigError) as exc:
        load_spec(_spec(tmp_path, change))
    assert exc.value.field == field and words in str(exc.value) and "spec.yaml:" in str(exc.value), str(exc.value)
    assert exc.value.line > 1


def test_the_shipped_specs_load():
    long, wide = load_spec(REPO_ROOT / "trainsets" / "t2dm-hba1c.yaml"), load_spec(REPO_ROOT / "trainsets" / "t2dm-hba1c-patient.yaml")
    assert (long.shape, long.matrix) == ("long", None)
    assert wide.shape == "per_patient" and wide.matrix.windows == [90, 365] and "hba1c" in wide.matrix.names
