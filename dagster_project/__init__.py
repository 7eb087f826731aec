"""Dagster wiring for hub: assets per published table, partitioned by institution. No logic here."""
