"""The view engine: FHIRPath typed by the FHIR R4 model, and the SQL-on-FHIR v2 ViewDefinition runner.

``fhirpath`` parses, compiles and evaluates expressions (``r4model`` holds the R4 element
types); ``runner`` validates and runs ViewDefinitions over resources, NDJSON lines or an
Iceberg table; ``conformance`` runs the spec's test files. Training sets, indicators and the
``hub views`` command are built on it.
"""
