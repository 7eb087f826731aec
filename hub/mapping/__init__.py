"""The declarative mapping language: source rows to FHIR R4 resources."""
