"""The k-anonymity gate: refuses what misses k, accepts after generalization, suppresses within budget."""

from __future__ import annotations

import pytest

from deid.risk import PatientFacts, RiskGateFailed, enforce_k, link_persons, measure, person_tuples


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


def test_every_observed_value_is_part_of_the_tuple():
    people = {f"p{i}": (frozenset({"1950"}), frozenset({"female"}), frozenset({"a"})) for i in range(3)}
    people["both"] = (frozenset({"1950"}), frozenset({"female"}), frozenset({"a", "b"}))  # seen at two institutions
    _, suppressed, report = enforce_k(people, k=3, names=["birth_year", "sex", "institution"], max_suppression=0.3, ladder=(1,))
    assert suppressed == {"both"} and report.k_achieved == 3 and report.classes_below_k == []
    assert report.suppressed_classes == [{"birth_year": "1950", "sex": "female", "institution": "a|b", "people": 1}]


def test_share_of_records_in_small_classes_weighs_each_person_by_rows():
    people = population([1950] * 3 + [1990])
    records = {"p0": 1, "p1": 1, "p2": 1, "p3": 7}
    with pytest.raises(RiskGateFailed) as exc:
        enforce_k(people, k=3, names=["birth_year", "sex"], max_suppression=0.0, ladder=(1,), records=records)
    level = exc.value.report.levels[0]
    assert (level.people_below_k, level.records_below_k, level.share_records_below_k) == (1, 7, 0.7)


def test_people_without_a_resident_id_join_everyone_with_their_birth_date_and_sex():
    facts = {
        "id-a": PatientFacts(linked=True, match={("1960-05-01", "male")}, patient_rows=1),
        "id-b": PatientFacts(linked=True, match={("1960-05-01", "male")}, patient_rows=1),  # a namesake by birth date
        "mrn-x": PatientFacts(linked=False, match={("1960-05-01", "male")}, patient_rows=1),  # could be a or b
        "id-c": PatientFacts(linked=True, match={("1970-01-01", "female")}, patient_rows=1),
        "id-d": PatientFacts(linked=True, match={("1970-01-01", "female")}, patient_rows=1),  # two IDs: two people
        "mrn-y": PatientFacts(linked=False, match={("1980-02-02", "female")}, patient_rows=2),
        "mrn-z": PatientFacts(linked=False, match={("1980-02-02", "female")}, patient_rows=1),  # same person elsewhere?
        "mrn-nodate": PatientFacts(linked=False, match={(None, "male")}, patient_rows=1),
        "orphan": PatientFacts(linked=True, patient_rows=0),  # rows but no Patient record
    }
    person_of, unlinkable = link_persons(facts)
    assert unlinkable == {"mrn-nodate", "orphan"}
    assert person_of["id-a"] == person_of["id-b"] == person_of["mrn-x"]  # merged: never one person counted twice
    assert person_of["id-c"] != person_of["id-d"]
    assert person_of["mrn-y"] == person_of["mrn-z"]
    assert len(set(person_of.values())) == 4


def test_a_person_is_counted_over_all_their_keys():
    person_of = {"k1": "k1", "k2": "k1", "k3": "k3"}
    observed = {"k1": {"birth_year": {"1950"}, "institution": {"a"}}, "k2": {"birth_year": {"1951"}, "institution": {"b"}},
                "k3": {"institution": {"a"}}}
    tuples = person_tuples(person_of, observed, ["birth_year", "institution"])
    assert tuples == {"k1": (frozenset({"1950", "1951"}), frozenset({"a", "b"})), "k3": (frozenset({None}), frozenset({"a"}))}
