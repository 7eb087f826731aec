"""Training sets: SQL-on-FHIR ViewDefinitions over the lakehouse, cohorts, splits, releases."""
