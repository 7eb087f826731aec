"""The view engine: a FHIRPath subset and the SQL-on-FHIR v2 ViewDefinition runner.

``fhirpath`` parses and evaluates expressions; ``runner`` validates and runs ViewDefinitions
over resources, NDJSON lines or an Iceberg table; ``conformance`` runs the spec's test files.
Training sets, indicators and the ``hub views`` command are built on it.
"""
