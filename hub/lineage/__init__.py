"""Lineage: the run catalog (runs, counts) kept in the same SQL database as the lakehouse catalog."""
