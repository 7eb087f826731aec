"""Dagster definitions by domain, one folder each: publish (the recognition-zone tables), serving (the recognition index), indicators."""
