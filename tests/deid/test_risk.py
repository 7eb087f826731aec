"""The k-anonymity gate: refuses what misses k, accepts after generalization, suppresses within budget."""

from __future__ import annotations

import pytest

from deid.risk import RiskGateFailed, enforce_k, measure


def population(years: list[int], sex: str = "female") -> dict[str, tuple]:
    return {f"p{i}": (str(y), sex) for i, y in enumerate(years)}


def test_measure_counts_people_in_small_classes():
    k, classes, below = measure({"a": ("1950", "f"), "b": ("1950", "f"), "c": ("1951", "f")}, 2)
    assert (k, classes, below) == (1, 2, {"c"})


def test_gate_refuses_a_release_that_misses_k():
    people = population([1950, 1951, 1952, 1953, 1954, 1960, 1961, 1962, 1963, 1964])  # every year unique
    with pytest.raises(RiskGateFailed) as exc:
        enforce_k(people, k=5, names=["birth_year", "sex"], max_suppression=0.0, ladder=(1,))
    report = exc.value.report
    assert not report.passed and report.levels[0].k == 1 and "cannot be met" in report.reason


def test_gate_accepts_the_same_release_after_generalization():
    people = population([1950, 1951, 1952, 1953, 1954, 1960, 1961, 1962, 1963, 1964])
    band, suppressed, report = enforce_k(people, k=5, names=["birth_year", "sex"], max_suppression=0.0)
    assert band == 5 and suppressed == set() and report.passed and report.k_achieved == 5
    assert [lv.band for lv in report.levels] == [1, 5]


def test_gate_suppresses_outliers_within_budget():
    people = population([1950] * 5 + [1955] * 5) | {"outlier": ("1990", "male")}
    band, suppressed, report = enforce_k(people, k=5, names=["birth_year", "sex"], max_suppression=0.1)
    assert band == 1 and suppressed == {"outlier"} and report.suppressed == 1 and report.k_achieved == 5
