"""Guideline indicators: golden rows on hand-made data (tests/data/indicators/), the
configuration's validation, MeasureReports validated by fhir.resources, and a trend on the demo."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
import yaml

from hub.trainset.indicator_config import DEFAULT_CONFIG, load_config
from hub.trainset.indicators import COLUMNS, compute_rows, to_table
from hub.trainset.measure_report import measure_report, measure_reports, to_ndjson
from hub.yamlio import ConfigError
from tests.conftest import DATA

GOLDEN = DATA / "indicators"


@pytest.fixture(scope="module")
def config():
    return load_config(DEFAULT_CONFIG)


@pytest.fixture(scope="module")
def inputs():
    return yaml.safe_load((GOLDEN / "input.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def rows(config, inputs):
    return compute_rows(config, **inputs, institution_names={"a": "Hospital A"})


def _expected() -> list[dict]:
    out = []
    with (GOLDEN / "expected.csv").open(encoding="utf-8") as f:
        for r in csv.DictReader(f):
            out.append({**r, **{k: int(r[k]) for k in ("managed", "not_measured", "denominator", "numerator")},
                        "share": float(r["share"]) if r["share"] else None})
    return out


def _one(rows, indicator, month, institution="a") -> dict:
    (row,) = [r for r in rows if (r["indicator"], r["month"], r["institution"]) == (indicator, month, institution)]
    return row


def test_rows_match_the_golden_file(rows):
    got = [{k: r[k] for k in _expected()[0]} for r in rows]
    assert got == _expected()
    assert all(list(r) == list(COLUMNS) for r in rows)


def test_every_row_carries_the_config_version_and_title(rows, config):
    assert {(r["config"], r["config_version"]) for r in rows} == {("cn-t2dm-2020", config.version)}
    titles = {i.id: i.title for i in config.indicators}
    assert all(r["title"] == titles[r["indicator"]] for r in rows)
    assert {r["institution_name"] for r in rows} == {"Hospital A"}


def test_hba1c_latest_of_the_month_counts_and_unmeasured_are_counted_apart(rows):
    jan = _one(rows, "t2dm-hba1c", "2024-01")  # d1 6.8 at target; d2 6.5 then 7.4: the later counts; d3 none
    assert (jan["managed"], jan["not_measured"], jan["denominator"], jan["numerator"]) == (3, 1, 2, 1)
    feb = _one(rows, "t2dm-hba1c", "2024-02")  # d5's only HbA1c is preliminary: not measured
    assert (feb["not_measured"], feb["denominator"], feb["numerator"]) == (1, 1, 1)


def test_diastolic_only_failure_fails_blood_pressure(rows, config, inputs):
    htn = _one(rows, "htn-bp", "2024-01")  # h1 138/92 fails on diastolic alone, h2 135/85 meets < 140/90
    assert (htn["denominator"], htn["numerator"]) == (2, 1)
    dm = _one(rows, "t2dm-bp", "2024-01")  # d2 125/85 fails < 130/80 on diastolic alone; d3 135/75 on systolic
    assert (dm["denominator"], dm["numerator"]) == (3, 1)
    # the same h1 with a diastolic of 89 would be at target: the diastolic alone decides
    changed = {**inputs, "blood_pressure": [{**r, "diastolic": 89} if r["patient"] == "h1" else r for r in inputs["blood_pressure"]]}
    assert _one(compute_rows(config, **changed), "htn-bp", "2024-01")["numerator"] == 2


def test_one_reading_meets_the_hypertension_target_and_fails_the_diabetic_one(rows):
    assert _one(rows, "htn-bp", "2024-02")["numerator"] == 1  # d5 135/85 < 140/90
    assert _one(rows, "t2dm-bp", "2024-02")["numerator"] == 0  # but not < 130/80


def test_ldl_target_is_lower_with_ascvd(rows, config, inputs):
    jan = _one(rows, "t2dm-ldl", "2024-01")  # d1 2.4 (no ASCVD) and d3 1.7 (I63) at target; d2 2.0 with I25 is not
    assert (jan["denominator"], jan["numerator"]) == (3, 2)
    no_ascvd = {**inputs, "conditions": [c for c in inputs["conditions"] if not c["code"].startswith("I25")]}
    assert _one(compute_rows(config, **no_ascvd), "t2dm-ldl", "2024-01")["numerator"] == 3  # d2's 2.0 < 2.6 now


def test_a_value_in_another_unit_is_not_a_measurement(rows):
    feb = _one(rows, "t2dm-ldl", "2024-02")  # d6's LDL-C 100 mg/dL is never converted
    assert (feb["managed"], feb["not_measured"], feb["denominator"], feb["share"]) == (2, 2, 0, None)


def test_managed_population_needs_a_visit_that_month_and_the_diagnosis_by_then(rows):
    # d4 has a diagnosis and an HbA1c at a in January but visited only b: not managed at a;
    # b recorded no diagnosis for d4: not managed at b either
    assert _one(rows, "t2dm-hba1c", "2024-01")["managed"] == 3
    assert not [r for r in rows if r["institution"] == "b"]
    # d6's diabetes was first recorded on 10 February: managed in February, not in January
    assert _one(rows, "t2dm-hba1c", "2024-02")["managed"] == 2


def test_all_three_needs_every_part_measured_and_at_target(rows):
    jan = _one(rows, "t2dm-all-three", "2024-01")  # d1 all at target; d2 all measured, not at target; d3 no HbA1c
    assert (jan["managed"], jan["not_measured"], jan["denominator"], jan["numerator"]) == (3, 1, 2, 1)


def test_comparator_values_count_only_when_they_decide(config):
    rows = compute_rows(config, conditions=[{"institution": "a", "patient": p, "code": "E11.9", "recorded": None} for p in "xyz"],
                        encounters=[{"institution": "a", "patient": p, "start": "2024-03-01T08:00:00+08:00"} for p in "xyz"],
                        labs=[{"institution": "a", "patient": p, "loinc": "4548-4", "value": v, "unit": "%", "comparator": c,
                               "status": "final", "time": "2024-03-01T09:00:00+08:00"} for p, v, c in
                              (("x", 5.0, "<"), ("y", 8.0, "<"), ("z", 14.0, ">"))])
    row = _one(rows, "t2dm-hba1c", "2024-03")  # <5.0 is at target, >14 is not, <8.0 cannot be told
    assert (row["denominator"], row["numerator"], row["not_measured"]) == (2, 1, 1)


def test_to_table_keeps_the_schema_without_rows():
    assert to_table([]).schema.names == list(COLUMNS)


# ---- MeasureReport ----------------------------------------------------------------------------

def test_measure_report_matches_the_golden_resource(rows):
    expected = json.loads((GOLDEN / "expected_measure_report.json").read_text(encoding="utf-8"))["resource"]
    got = measure_report(_one(rows, "t2dm-bp", "2024-01"))
    assert got.pop("id") == hashlib.sha256(expected["identifier"][0]["value"].encode()).hexdigest()[:32]
    assert got == expected


def test_every_measure_report_is_valid_r4(rows):
    from fhir.resources.R4B.measurereport import MeasureReport

    reports = measure_reports(rows)
    assert len(reports) == len(rows) == len({r["id"] for r in reports})
    for report in reports:
        MeasureReport.model_validate(report)  # raises on any invalid element
    no_score = [r for r, row in zip(reports, rows, strict=True) if row["denominator"] == 0]
    assert no_score and all("measureScore" not in r["group"][0] for r in no_score)
    feb = [r for r in reports if r["period"] == {"start": "2024-02-01", "end": "2024-02-29"}]  # a leap year
    assert len(feb) == 5
    assert [json.loads(line) for line in to_ndjson(rows).splitlines()] == reports


# ---- configuration --------------------------------------------------------------------------

def test_shipped_config_names_its_guidelines_and_thresholds(config):
    by = {i.id: i for i in config.indicators}
    assert by["t2dm-hba1c"].below == 7.0 and by["t2dm-bp"].below_bp == (130, 80) and by["htn-bp"].below_bp == (140, 90)
    assert (by["t2dm-ldl"].below, by["t2dm-ldl"].below_with_ascvd) == (2.6, 1.8)
    assert by["t2dm-all-three"].all_of == ("t2dm-hba1c", "t2dm-bp", "t2dm-ldl")
    assert {"I20", "I25", "I63", "I70"} <= set(config.ascvd)
    assert "2020" in config.sources["cds-2020"] and config.label == "cn-t2dm-2020@2020.1"
    bp = config.measurements["bp"]
    assert (bp.loinc, bp.systolic, bp.diastolic, bp.unit) == ("85354-9", "8480-6", "8462-4", "mm[Hg]")


@pytest.mark.parametrize(("old", "new", "field", "problem"), [
    ("below: {systolic: 130, diastolic: 80}", "below: {systolic: 130}", "indicators[1].below.diastolic", "is missing"),
    ("    below: 7.0\n", "    below: seven\n", "indicators[0].below", "is 'seven'"),
    ("population: hypertension\n    measurement: bp", "population: gout\n    measurement: bp", "indicators[4].population", "'gout' is not defined"),
    ("icd10: [I20,", "icd10: [heart,", "ascvd.icd10", "'heart' is not an ICD-10 code prefix"),
    ("all_of: [t2dm-hba1c, t2dm-bp, t2dm-ldl]", "all_of: [t2dm-hba1c, htn-bp]", "indicators[3].all_of", "'htn-bp' is not a single"),
    ('version: "2020.1"\n', "", ".version", "is missing"),
    ("    source: chg-2018\n", "    source: chg-2018\n    colour: red\n", "indicators[4].colour", "is not a known field"),
])
def test_config_errors_name_file_line_and_field(tmp_path: Path, old, new, field, problem):
    text = DEFAULT_CONFIG.read_text(encoding="utf-8")
    assert old in text
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    e = err.value
    assert e.file == str(bad) and e.field == field and problem in e.problem, str(e)
    line = bad.read_text(encoding="utf-8").splitlines()[e.line - 1]
    if problem != "is missing":  # the line of the offending key itself
        assert field.rsplit(".", 1)[-1].split("[")[0] + ":" in line, (e.line, line)


# ---- blood pressure from the HIS mappings ----------------------------------------------------

def _mapped(vendor: str, mapping: str, tmp_path: Path, keys) -> list[dict]:
    from tests.mapping.golden import run_scenario

    resources, reasons = run_scenario(GOLDEN / vendor, [mapping], tmp_path, keys)
    assert reasons == []
    return [json.loads(line) for line in resources["Observation"]]


def test_vendor_b_blood_pressure_maps_to_a_vital_signs_observation_with_two_components(tmp_path, keys):
    from fhir.resources.R4B.observation import Observation

    from hub.fhir.check import check

    (obs,) = _mapped("vendor_b", "his_vendor_b", tmp_path, keys)
    expected = json.loads((GOLDEN / "vendor_b" / "expected_blood_pressure.json").read_text(encoding="utf-8"))["resource"]
    assert {k: obs[k] for k in expected} == expected
    assert obs["subject"]["reference"].startswith("Patient/") and obs["encounter"]["reference"].startswith("Encounter/")
    assert check(obs) == []
    Observation.model_validate(obs)


def test_fast_checks_agree_with_the_oracle_on_components(tmp_path, keys):
    from hub.fhir.check import check
    from hub.fhir.validate import validation_problems

    (obs,) = _mapped("vendor_b", "his_vendor_b", tmp_path, keys)
    assert check(obs) == validation_problems(obs) == []
    two_values = json.loads(json.dumps(obs))
    two_values["component"][1]["valueString"] = "85"  # a choice element with two types
    no_code = json.loads(json.dumps(obs))
    del no_code["component"][0]["code"]  # component.code is required
    for bad in (two_values, no_code):
        assert check(bad) and validation_problems(bad)


def test_blood_pressure_view_reads_mapped_components_and_skips_unmapped_units(tmp_path, keys, config):
    from hub.views.runner import ViewRunner

    observations = _mapped("vendor_a", "his_vendor_a", tmp_path, keys)  # 138/92 mmHg and 18/12 kPa
    view = json.loads((Path(__file__).resolve().parents[2] / "trainsets" / "views" / "blood_pressure.json").read_text(encoding="utf-8"))
    bp = sorted(({**r, "institution": "a"} for r in ViewRunner(view).rows(observations)), key=lambda r: r["time"])
    assert [(r["systolic"], r["diastolic"], r["systolic_unit"]) for r in bp] == [(138, 92, "mm[Hg]"), (18, 12, None)]
    patient = bp[0]["patient"]
    rows = compute_rows(config, conditions=[{"institution": "a", "patient": patient, "code": "I10", "recorded": None}],
                        encounters=[{"institution": "a", "patient": patient, "start": "2024-03-05T08:30:00+08:00"}],
                        blood_pressure=bp)
    row = _one(rows, "htn-bp", "2024-03")  # the later kPa reading has no UCUM code: the mmHg one counts, and fails
    assert (row["denominator"], row["numerator"]) == (1, 0)


def test_demo_blood_pressure_improves_with_time_under_care():
    from hub.demo import generator as G

    data = G.build_region(120)
    vitals = data["city-first"]["his_vendor_a"]["vital_sign"] + data["xihu-second"]["his_vendor_b"]["T_JZ_TZ"]
    assert len(vitals) > 100
    his = {"city-first": ("visit", "visit_id", "visit_time", "mrn"), "xihu-second": ("T_JZ_JZJL", "JZID", "JZSJ", "BRID")}
    at_target = {"early": [0, 0], "late": [0, 0]}
    for inst, (table, key, time, who) in his.items():
        schema = "his_vendor_a" if inst == "city-first" else "his_vendor_b"
        visits = {v[key]: v for v in data[inst][schema][table]}
        first: dict = {}
        for v in sorted(visits.values(), key=lambda v: v[time]):  # both vendors' time texts sort as times
            first.setdefault(v[who], v[time])
        for r in data[inst][schema]["vital_sign" if inst == "city-first" else "T_JZ_TZ"]:
            v = visits[r["visit_id" if inst == "city-first" else "JZID"]]
            sbp, dbp = (r["sbp"], r["dbp"]) if inst == "city-first" else (r["SSY"], r["SZY"])
            part = "early" if v[time] == first[v[who]] else "late"
            at_target[part][0] += sbp < 140 and dbp < 90
            at_target[part][1] += 1
    early, late = (n / d for n, d in at_target.values())
    assert late > early + 0.05, at_target


# ---- on the demo ------------------------------------------------------------------------------

@pytest.mark.slow
def test_demo_shows_a_month_by_month_trend_for_each_indicator(demo):
    from hub.trainset.indicators import compute

    region, _, _ = demo
    rows = compute(region).to_pylist()
    for ind in ("t2dm-hba1c", "t2dm-bp", "t2dm-ldl", "t2dm-all-three", "htn-bp"):
        measured = [r for r in rows if r["indicator"] == ind and r["denominator"]]
        assert len({r["month"] for r in measured}) >= 2, ind
        assert all(0 <= r["numerator"] <= r["denominator"] <= r["managed"] for r in measured)
    # attainment moves as a managed population's would: better in the later half of the span
    def share(ind, half):
        rs = sorted((r for r in rows if r["indicator"] == ind), key=lambda r: r["month"])
        months = sorted({r["month"] for r in rs})
        cut = months[len(months) // 2]
        part = [r for r in rs if (r["month"] >= cut) == (half == "late")]
        return sum(r["numerator"] for r in part) / max(1, sum(r["denominator"] for r in part))
    for ind in ("t2dm-hba1c", "htn-bp", "t2dm-bp"):
        assert share(ind, "late") > share(ind, "early"), ind
    reports = measure_reports(rows)
    from fhir.resources.R4B.measurereport import MeasureReport

    for report in reports[:50]:
        MeasureReport.model_validate(report)
