"""The lakehouse: Iceberg tables (pyiceberg, SQL catalog) of de-identified FHIR resources."""
