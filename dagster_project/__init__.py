"""Dagster wiring for hub, one folder per domain under defs/ (publish, serving, research, trainsets, indicators), merged in definitions.py; no logic here, only calls into hub."""

from hub.memory import prefer_system_arrow_pool

prefer_system_arrow_pool()  # before the definitions import pyarrow; runs and their workers inherit it (hub/memory.py)
