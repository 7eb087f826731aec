"""Serving: the recognition index the recognition FHIR API reads, kept up to date with the published tables."""
