"""FHIR R4 helpers: deterministic ids, lossless JSON, validation."""
