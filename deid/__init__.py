"""deid: de-identification of FHIR resources under per-data-element rulesets."""
