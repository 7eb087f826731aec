"""Publish: one institution run pulls every feed and publishes the recognition-zone tables, with their checks."""
