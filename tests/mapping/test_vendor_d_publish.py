"""Vendor D through a real publish: rows excluded by ``where:`` are never read, a query source
and occurrence keys keep watermarks and replay working, and a clinical time before the
published patient's birth date (``not_before_birth: true``, checked across blocks) is quarantined."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from hub import quarantine
from hub.lineage import runrecord
from hub.lineage.signing import DEMO_KEY_NAME, DEMO_TRUSTED_NAME, ensure_demo_keys
from hub.pipeline import run_institution
from hub.region import load_region
from hub.replay import replay
from tests.mapping.test_vendor_d import FOLDER, build_source

INST = "riverside"


@pytest.fixture()
def region(tmp_path):
    build_source(tmp_path / "src.db")
    ensure_demo_keys(tmp_path)
    (tmp_path / "region.yaml").write_text(
        f'region: test\nsigning_key_file: "{{workspace}}/keys/{DEMO_KEY_NAME}"\n'
        f'trusted_keys_file: "{{workspace}}/keys/{DEMO_TRUSTED_NAME}"\n'
        f"institutions:\n  - id: {INST}\n    name: Riverside\n    feeds:\n"
        f'      - {{name: his, mapping: "{FOLDER / "vendor_d.yaml"}", url: "sqlite:///{{workspace}}/src.db"}}\n',
        encoding="utf-8")
    return load_region(tmp_path)


def _source(region) -> sqlite3.Connection:
    return sqlite3.connect(Path(region.workspace) / "src.db")


def _counts(report) -> dict[str, tuple[int, int, int]]:
    return {rtype: (c["read"], c["published"], c["quarantined"]) for rtype, c in report.by_resource().items()}


def _open_causes(region) -> list[str]:
    engine = runrecord.connect(region.catalog_url)
    return [e["cause"] for e in quarantine.list_rows(engine, institution=INST, status="open")]


def test_publish_reads_only_wanted_rows_and_checks_times_against_the_published_birth_date(region, keys):
    report = run_institution(region, INST, keys)
    assert _counts(report) == {
        "Patient": (6, 4, 2),
        "Encounter": (7, 4, 3),  # 8 admissions, one soft-deleted and never read
        "Condition": (6, 6, 0),
        "Observation": (14, 10, 4),  # 15 lab rows, the QC item never read; the 1999 draw from a 2000 birth quarantined
        "MedicationRequest": (6, 4, 2),  # both tables of the query
    }
    assert "Observation.effectiveDateTime: is before the patient's birth date" in _open_causes(region)


def test_watermarks_and_replay_work_with_a_query_and_occurrence_keys(region, keys):
    run_institution(region, INST, keys)
    with _source(region) as conn:
        conn.execute("INSERT INTO LABEVENTS VALUES (101, 2001, 50912, '2024-01-17 09:00:00', '0.9', 'mg/dL', '2024-08-01 10:00:00')")
        conn.execute("INSERT INTO PRESCRIPTIONS_ARCHIVE VALUES (104, 2005, '2024-11-04', 'RX#000089/2024', 'Aspirin', 63981056, '81', 'mg', 'PO/TAB', '0')")
    second = run_institution(region, INST, keys)
    obs = next(c for c in second.counts if c.resource_type == "Observation")
    meds = next(c for c in second.counts if c.resource_type == "MedicationRequest")
    # the new row (occurrence 3 of its natural key), and the last instant's two tied rows again (still quarantined)
    assert (obs.rows_read, obs.written, obs.quarantined) == (3, 1, 2)
    assert (meds.rows_read, meds.written) == (2, 1)  # likewise, through the query

    with _source(region) as conn:  # fix two quarantined rows at the source, then replay them
        conn.execute("UPDATE PRESCRIPTIONS SET REFILLS = '3' WHERE ORDER_REF = 'RX#000127/2024'")
        conn.execute("UPDATE LABEVENTS SET VALUE = '412' WHERE ITEMID = 51009")
    result = replay(region, INST, keys)
    assert result.published == 2 and not result.not_in_source and not result.no_block
    causes = _open_causes(region)
    assert not any("FHIR integer" in c or "FHIR decimal" in c for c in causes)
