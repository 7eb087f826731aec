"""Hostile rows in a schema without primary keys (vendor D): every row read is published or quarantined.

Rows written as a broken client would leave them, into tables that have no primary key at
all: NULLs everywhere, bytes that are not UTF-8, a NUL character, a 1 MB string, the same
key twice, a NULL and an unparseable update time. Counts must reconcile per block, the run
must go on, and rows the watermark cannot see must be reported.
"""

from __future__ import annotations

import pytest

from hub import quarantine
from hub.lineage import runrecord
from hub.pipeline import run_institution
from tests.mapping.test_vendor_d_publish import INST, _source
from tests.mapping.test_vendor_d_publish import region as region  # noqa: F401 - the vendor D workspace fixture

pytestmark = pytest.mark.slow


def _block(report, table: str):
    return next(c for c in report.counts if c.source_table == table)


def test_hostile_rows_without_primary_keys_reconcile(region, keys):  # noqa: F811
    first = run_institution(region, INST, keys)
    before = {c.source_table: c.quarantined for c in first.counts}
    conn = _source(region)
    conn.executescript("""
        INSERT INTO PATIENTS VALUES (NULL, NULL, NULL, NULL);                                -- nothing at all
        INSERT INTO PATIENTS VALUES (201, 'F', CAST(x'30372f30342fff' AS TEXT), NULL);       -- not UTF-8
        INSERT INTO PATIENTS VALUES (202, 'F', '07/04/55', 'x' || char(0) || 'y');           -- a NUL character
        INSERT INTO PATIENTS VALUES (101, 'M', '10/23/64', NULL);                            -- the same key twice in one pull
        INSERT INTO DIAGNOSES_ICD VALUES (101, 2001, 9, '4019', hex(zeroblob(600000)));    -- 1.2 MB of text
        INSERT INTO LABEVENTS VALUES (101, 2001, 50912, '2024-02-01 09:00:00', '1.1', 'mg/dL', NULL);                 -- no update time
        INSERT INTO LABEVENTS VALUES (101, 2001, 50912, '2024-02-02 09:00:00', '1.1', 'mg/dL', '9999-12-31 25:61');    -- poisoned
    """)
    conn.commit()
    report = run_institution(region, INST, keys)
    for c in report.counts:
        assert c.rows_read == c.published + c.quarantined, c
    patients = _block(report, "PATIENTS")
    assert patients.quarantined - before["PATIENTS"] >= 4  # the empty row, bad bytes, NUL, the duplicate
    assert _block(report, "DIAGNOSES_ICD").quarantined - before["DIAGNOSES_ICD"] == 1
    assert report.unwatermarked == {"his:LABEVENTS": 1}  # an incremental pull cannot see it: reported
    causes = " | ".join(e["reason"] for e in quarantine.list_rows(runrecord.connect(region.catalog_url), institution=INST, status="open"))
    for expected in ("not valid UTF-8", "NUL character", "1,200,000 characters", "same source key", "not a date-time"):
        assert expected in causes, expected

    full = run_institution(region, INST, keys, full=True)
    labs = _block(full, "LABEVENTS")
    assert labs.rows_read == labs.published + labs.quarantined and labs.rows_read >= 16  # --full reads the NULL one
