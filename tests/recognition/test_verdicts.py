"""Every recognition verdict, on a small index built by hand."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from hub.recognition.index import connect, results
from hub.recognition.query import judge, query
from hub.recognition.rules import load_rules

AT = dt.datetime(2024, 6, 30, 12, tzinfo=dt.UTC)
RULES = load_rules()


@pytest.mark.parametrize(
    ("loinc", "issuer", "status", "days_ago", "expected"),
    [
        ("4548-4", "city-first", "final", 20, "recognisable"),  # HbA1c, 60-day window
        ("4548-4", "beishan-chc", "final", 20, "same-institution"),
        ("1988-5", "city-first", "final", 2, "not-listed"),  # CRP is not on the demo list
        ("4548-4", "city-first", "preliminary", 2, "not-final"),
        ("4548-4", "xihu-second", "final", 20, "eqa-failed"),  # failed EQA for HbA1c in 2024
        ("2823-3", "city-first", "final", 8, "outside-window"),  # potassium: 7 days
        ("2823-3", "city-first", "corrected", 6, "recognisable"),  # a corrected result is final
    ],
)
def test_each_verdict(loinc, issuer, status, days_ago, expected):
    code, age, _ = judge(RULES, "beishan-chc", loinc, issuer, status, AT - dt.timedelta(days=days_ago), AT)
    assert code == expected and age == days_ago


def test_query_marks_recognisable_results_and_skips_later_ones(tmp_path):
    engine = connect(f"sqlite:///{tmp_path / 'idx.db'}")
    def row(loinc, inst, days, status="final"):
        return {"patient": "p", "resource_type": "Observation", "loinc": loinc, "institution": inst, "observation_id": f"{loinc}-{inst}",
                "effective_time": AT - dt.timedelta(days=days), "status": status,
                "resource": json.dumps({"resourceType": "Observation", "id": f"{loinc}-{inst}", "status": status})}
    with engine.begin() as conn:
        conn.execute(results.insert(), [row("4548-4", "city-first", 20), row("4548-4", "xihu-second", -3), row("2823-3", "city-first", 30)])
    verdicts = query(engine, RULES, "p", "beishan-chc", at=AT)
    assert [(v.loinc, v.institution, v.code, v.mark) for v in verdicts] == [
        ("2823-3", "city-first", "outside-window", None), ("4548-4", "city-first", "recognisable", "HR 杭州市"),
    ]
    assert [v.loinc for v in query(engine, RULES, "p", "beishan-chc", ["2823-3"], at=AT)] == ["2823-3"]


def test_catalog_errors_name_file_and_line(tmp_path):
    import shutil

    from hub.recognition.rules import DEFAULT_DIR
    from hub.yamlio import ConfigError

    shutil.copytree(DEFAULT_DIR, tmp_path / "rec")
    text = (tmp_path / "rec" / "items.yaml").read_text(encoding="utf-8").replace("window_days: 60", "window_days: sixty")
    (tmp_path / "rec" / "items.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_rules(tmp_path / "rec")
    assert "items.yaml" in str(exc.value) and exc.value.field == "items.window_days" and exc.value.line > 1


def test_eqa_unknown_when_the_catalog_requires_explicit_records():
    import dataclasses

    strict = dataclasses.replace(RULES, eqa_default="unknown")
    assert judge(strict, "beishan-chc", "4548-4", "city-first", "final", AT - dt.timedelta(days=3), AT)[0] == "eqa-unknown"
    assert judge(strict, "beishan-chc", "4548-4", "xihu-second", "final", dt.datetime(2025, 3, 1, tzinfo=dt.UTC), dt.datetime(2025, 3, 10, tzinfo=dt.UTC))[0] == "recognisable"
