"""Dagster wiring for hub, one folder per domain under defs/ (publish, serving, research, trainsets, indicators), merged in definitions.py; no logic here, only calls into hub."""
