"""hub's FHIRPath: the cases issue 15 found silently wrong, refusals, and the SQL-on-FHIR functions."""

from __future__ import annotations

import pytest

from hub.views.fhirpath import FhirPathError, evaluate, parse

ENCOUNTER = {"resourceType": "Encounter", "id": "e1", "classHistory": [{"class": {"code": "AMB"}}],
             "period": {"start": "2024-03-05T08:30:00+08:00", "end": "2024-03-06T01:00:00Z"}}
SERVICE_REQUEST = {"resourceType": "ServiceRequest", "id": "s1", "reasonCode": [{"text": "diabetes"}],
                   "occurrenceDateTime": "2024-03-01"}
PATIENT = {"resourceType": "Patient", "id": "p1", "birthDate": "1958-07-15",
           "name": [{"given": ["Wei", "Li"], "family": "Zhang"}, {"given": ["Xiao"]}],
           "managingOrganization": {"reference": "Organization/o1"}}
OBSERVATION = {"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/p1"},
               "effectiveDateTime": "2024-03-06T09:40:00+08:00",
               "component": [{"code": {"text": "sys"}, "valueQuantity": {"value": 142, "code": "mm[Hg]"}},
                             {"code": {"text": "pos"}, "valueString": "sitting"}]}


def test_choice_elements_follow_the_r4_definitions_not_a_name_prefix():
    assert evaluate("Encounter.class.exists()", ENCOUNTER) == [False]
    assert evaluate("classHistory.class.code", ENCOUNTER) == ["AMB"]
    assert evaluate("ServiceRequest.reason.text", SERVICE_REQUEST) == []
    assert evaluate("occurrence", SERVICE_REQUEST) == ["2024-03-01"]
    assert evaluate("occurrence.ofType(dateTime)", SERVICE_REQUEST) == ["2024-03-01"]
    assert evaluate("component.value.ofType(Quantity).value", OBSERVATION) == [142]
    assert evaluate("component.value.ofType(string)", OBSERVATION) == ["sitting"]
    assert evaluate("component.first().value is Quantity", OBSERVATION) == [True]
    assert evaluate("component.value.value", OBSERVATION) == [142]


def test_equality_on_collections_is_false_or_empty_never_an_error():
    assert evaluate("name.given = 'Wei'", PATIENT) == [False]
    assert evaluate("name.given != 'Wei'", PATIENT) == [True]
    assert evaluate("name.first().given.first() = 'Wei'", PATIENT) == [True]
    assert evaluate("name.family = {}", PATIENT) == []


def test_index_variable():
    assert evaluate("name.given.where($index = 1)", PATIENT) == ["Li"]
    assert evaluate("name.select($index)", PATIENT) == [0, 1]


def test_dates_compare_as_dates():
    assert evaluate("birthDate < @1960-01-01", PATIENT) == [True]
    assert evaluate("birthDate < '1960-01-01'", PATIENT) == [True]  # the string is read as a date
    # text comparison would say "2024-03-05T08:30:00+08:00" > "2024-03-05T01:00:00Z"; as instants they are equal
    assert evaluate("period.start = @2024-03-05T00:30:00Z", ENCOUNTER) == [True]
    assert evaluate("period.start < period.end", ENCOUNTER) == [True]
    assert evaluate("effective > @2024-03-06", OBSERVATION) == []  # day equal, precisions differ
    assert evaluate("birthDate + 18 years", PATIENT) == ["1976-07-15"]
    assert evaluate("today() - 18 years > birthDate", PATIENT) == [True]


def test_common_functions():
    assert evaluate("iif(name.count() > 1, 'many', 'one')", PATIENT) == ["many"]
    assert evaluate("%resource.id", PATIENT) == ["p1"]
    assert evaluate("name.first().family.substring(0, 2).lower()", PATIENT) == ["zh"]
    assert evaluate("name.given.where(startsWith('X'))", PATIENT) == ["Xiao"]
    assert evaluate("name.given.last()", PATIENT) == ["Xiao"]
    assert evaluate("(name.given | name.family).count()", PATIENT) == [4]
    assert evaluate("name.select(given.first())", PATIENT) == ["Wei", "Xiao"]
    assert evaluate("(birthDate as date).toString()", PATIENT) == ["1958-07-15"]
    assert evaluate("birthDate is date", PATIENT) == [True]


def test_sql_on_fhir_key_functions():
    assert evaluate("getResourceKey()", OBSERVATION) == ["o1"]
    assert evaluate("subject.getReferenceKey(Patient)", OBSERVATION) == ["p1"]
    assert evaluate("subject.getReferenceKey(Group)", OBSERVATION) == []
    assert evaluate("managingOrganization.getReferenceKey()", PATIENT) == ["o1"]
    assert evaluate("%rowIndex", PATIENT) == [0]


@pytest.mark.parametrize("expression, part", [
    ("managingOrganization.resolve()", "function resolve() is not supported"),
    ("name.given.aggregate($this)", "function aggregate() is not supported"),
    ("name.given.select($total)", "$total is not supported"),
    ("descendants()", "function descendants() is not supported"),
    ("name.given.first(1)", "first() takes 0 arguments, got 1"),
    ("name.given.where(", "expected more"),
    ("birthDate.lowBoundary(4)", "with a precision argument is not supported"),
])
def test_an_unsupported_expression_is_refused_naming_it_and_the_part(expression, part):
    with pytest.raises(FhirPathError) as exc:
        parse(expression)
    assert repr(expression) in str(exc.value) and part in str(exc.value)


def test_an_expression_that_cannot_be_evaluated_on_the_data_is_refused_not_guessed():
    with pytest.raises(FhirPathError, match=r"FHIRPath 'name.given < 3'.*cannot compare String with Integer|needs single values"):
        evaluate("name.given < 3", PATIENT)
    with pytest.raises(FhirPathError, match="'<' needs single values"):
        evaluate("name.given < 'Z'", PATIENT)
    with pytest.raises(FhirPathError, match="cannot compare String with Integer"):
        evaluate("name.first().family < 3", PATIENT)
    with pytest.raises(FhirPathError, match="FHIRPath \"birthDate > '1958-7-1'\": cannot compare Date with String"):
        evaluate("birthDate > '1958-7-1'", PATIENT)  # not a date: refused, never compared as text


def test_quantities_compare_across_metric_units_and_refuse_other_units():
    dose = {"resourceType": "MedicationRequest", "id": "m1", "dosageInstruction": [
        {"doseAndRate": [{"doseQuantity": {"value": 0.5, "unit": "g", "code": "g"}}]}]}
    assert evaluate("dosageInstruction.doseAndRate.dose.ofType(Quantity) = 500 'mg'", dose) == [True]
    assert evaluate("dosageInstruction.doseAndRate.dose.ofType(Quantity) < 1 'g'", dose) == [True]
    assert evaluate("1 'mmol/L' = 1000 'umol/L'", dose) == [True]
    assert evaluate("1 'mmol/L' = 1 'mg/dL'", dose) == []  # not comparable: empty, as FHIRPath says
    assert evaluate("2 weeks = 14 days", dose) == [True]
    with pytest.raises(FhirPathError, match="units 'mm\\[Hg\\]' and 'kPa' is not supported"):
        evaluate("1 'mm[Hg]' < 2 'kPa'", dose)


def test_a_refusal_while_running_a_view_names_the_path():
    from hub.views.runner import ViewError, run_view

    view = {"resource": "Patient", "select": [{"column": [{"name": "early", "path": "name.given < 'M'"}]}]}
    with pytest.raises(ViewError, match="FHIRPath \"name.given < 'M'\": '<' needs single values, got 3 and 1"):
        run_view(view, [PATIENT])
