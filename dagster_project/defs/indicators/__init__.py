"""Indicators: outcome indicators per institution and month, computed from the published tables."""
