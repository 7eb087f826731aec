"""Lakehouse maintenance: compaction, snapshot expiry and orphan removal as scheduled Dagster jobs."""
