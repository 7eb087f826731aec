"""Lineage: the run record (runs, counts) kept in the same SQL database as the lakehouse catalog."""
