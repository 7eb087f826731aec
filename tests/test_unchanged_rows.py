"""A source row read again unchanged is not mapped again: its hash, with the configuration, equals its published version's."""

from __future__ import annotations

import sqlite3

import pytest

from hub.demo.generator import generate_region
from hub.pipeline import run_institution
from hub.prepare import Preparer
from hub.region import load_region

pytestmark = pytest.mark.slow
INST = "city-first"  # vendor A: every patient has the same updated_at, so each pull re-reads them all


@pytest.fixture()
def region(tmp_path, keys):
    generate_region(tmp_path / "ws", patients=12)
    region = load_region(tmp_path / "ws")
    run_institution(region, INST, keys)
    return region


@pytest.fixture()
def prepared(monkeypatch):
    """Rows handed to the per-row work (map, validate, de-identify), per source table."""
    counts: dict[str, int] = {}
    real = Preparer.prepare

    def counting(self, mapping_path, block_index, rows, *rest):
        table = self.compiled(mapping_path, block_index).block.table
        counts[table] = counts.get(table, 0) + len(rows)
        return real(self, mapping_path, block_index, rows, *rest)

    monkeypatch.setattr(Preparer, "prepare", counting)
    return counts


def _patients(report):
    return next(c for c in report.counts if c.source_table == "patient")


def test_rows_read_again_unchanged_are_not_mapped_again(region, keys, prepared):
    report = run_institution(region, INST, keys)
    block = _patients(report)
    assert block.rows_read == 12 and block.published == 12 and block.unchanged == 12 and block.written == 0
    assert prepared.get("patient", 0) == 0


def test_a_changed_row_is_mapped_again_and_only_it(region, keys, prepared):
    url = next(f.url for f in region.institution(INST).feeds if f.name == "his")
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        conn.execute("UPDATE patient SET sex = 'F' WHERE patient_id = (SELECT min(patient_id) FROM patient WHERE sex = 'M')")
    block = _patients(run_institution(region, INST, keys))
    assert prepared["patient"] == 1 and block.written == 1 and block.rows_read == 12
    assert block.rows_read == block.published + block.quarantined


def test_a_full_pull_maps_every_row_again(region, keys, prepared):
    block = _patients(run_institution(region, INST, keys, full=True))
    assert prepared["patient"] == 12 and block.written == 0 and block.unchanged == 12
