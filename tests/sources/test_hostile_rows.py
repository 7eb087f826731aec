"""Hostile source rows: every row read is published or quarantined, and none poisons the run.

Rows are written into a real vendor-A HIS database (SQLite) the way a broken client or a
careless migration would leave them: every column NULL, bytes that are not UTF-8, a NUL
character, a 2 MB string, an update time of 9999-12-31 25:61 or far in the future, a
NULL update time, and an MRN reused for another person.
"""

from __future__ import annotations

import datetime as dt
import sqlite3

import pytest

from hub import quarantine
from hub.demo.generator import generate_region
from hub.identifiers import resident_id_check_char
from hub.lineage import runrecord
from hub.pipeline import run_institution
from hub.region import load_region

pytestmark = pytest.mark.slow
INST = "city-first"
NOW = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).strftime("%Y-%m-%d %H:%M:%S")


def _id_number(birth: str, seq: str = "123") -> str:
    first = "330106" + birth + seq
    return first + resident_id_check_char(first)


@pytest.fixture()
def region(tmp_path, keys):
    generate_region(tmp_path / "ws", patients=12)
    region = load_region(tmp_path / "ws")
    run_institution(region, INST, keys)
    return region


def _his(region) -> sqlite3.Connection:
    url = next(f.url for f in region.institution(INST).feeds if f.name == "his")
    return sqlite3.connect(url.removeprefix("sqlite:///"))


def _insert_patient(conn, pid: int, **cols) -> None:
    values = {"patient_id": pid, "mrn": f"H{pid}", "name": "测试", "sex": "F", "birth_date": "1960-05-01",
              "id_card_no": None, "phone": None, "address": None, "updated_at": NOW, **cols}
    names = ", ".join(values)
    conn.execute(f"INSERT INTO patient ({names}) VALUES ({', '.join('?' for _ in values)})", list(values.values()))


def _block(report, table: str):
    return next(c for c in report.counts if c.source_table == table)


def test_hostile_rows_are_each_published_or_quarantined_and_the_run_goes_on(region, keys):
    conn = _his(region)
    _insert_patient(conn, 9001, mrn="", name=None, sex=None, birth_date=None, updated_at=NOW)  # nothing but a key
    conn.execute("INSERT INTO patient (patient_id, mrn, name, updated_at) VALUES (9002, 'H9002', CAST(x'e5bca0ff' AS TEXT), ?)", (NOW,))
    _insert_patient(conn, 9003, address="杭州市\x00西湖区")
    _insert_patient(conn, 9004, address="x" * (2 * 1024 * 1024))
    _insert_patient(conn, 9005, name="正常")  # a good row among them
    conn.commit()

    report = run_institution(region, INST, keys)
    block = _block(report, "patient")
    assert block.quarantined == 4 and block.written == 1  # (unchanged rows at the watermark boundary are re-read)
    assert block.rows_read == block.published + block.quarantined
    reasons = " | ".join(e["reason"] for e in quarantine.list_rows(runrecord.connect(region.catalog_url), institution=INST, status="open"))
    assert "key is empty" in reasons or "is empty" in reasons
    assert "is not valid UTF-8 text (byte 0xff" in reasons
    assert "NUL character" in reasons and "2,097,152 characters" in reasons
    assert "西湖区" not in reasons and "测试" not in reasons  # reasons name the column, never the value


def test_an_update_time_in_the_future_or_unparseable_does_not_poison_the_watermark(region, keys):
    conn = _his(region)
    _insert_patient(conn, 9101, updated_at="9999-12-31 25:61")
    _insert_patient(conn, 9102, updated_at="2999-01-01 00:00:00")
    conn.commit()
    first = _block(run_institution(region, INST, keys), "patient")
    assert first.quarantined == 2 and first.written == 0

    later = (dt.datetime.now(dt.timezone(dt.timedelta(hours=8))) + dt.timedelta(minutes=1)).strftime("%Y-%m-%d %H:%M:%S")
    _insert_patient(conn, 9103, updated_at=later)  # written after: must still be read
    conn.commit()
    second = _block(run_institution(region, INST, keys), "patient")
    assert second.written == 1  # 9103 was seen: the watermark did not jump to 2999 or 9999
    engine = runrecord.connect(region.catalog_url)
    from hub import watermarks

    assert watermarks.get(engine, INST, "his", "Patient:patient:patient") < "2100"


def test_rows_without_an_update_time_are_reported_and_read_by_a_full_pull(region, keys):
    conn = _his(region)
    _insert_patient(conn, 9201, updated_at=None)
    conn.commit()
    incremental = run_institution(region, INST, keys)
    assert incremental.unwatermarked == {"his:patient": 1}  # an incremental pull cannot see it: reported
    assert _block(incremental, "patient").written == 0
    full = _block(run_institution(region, INST, keys, full=True), "patient")
    assert full.rows_read == 13 and full.written == 1 and full.rows_read == full.published + full.quarantined


def test_an_mrn_reused_for_another_person_is_quarantined_not_overwritten(region, keys):
    conn = _his(region)
    mrn, birth = conn.execute("SELECT mrn, birth_date FROM patient WHERE id_card_no IS NOT NULL ORDER BY patient_id LIMIT 1").fetchone()
    other = _id_number("19810203")
    _insert_patient(conn, 9301, mrn=mrn, id_card_no=other, birth_date="1981-02-03")
    conn.commit()
    report = run_institution(region, INST, keys)
    block = _block(report, "patient")
    assert block.quarantined == 1 and block.written == 0
    entry = quarantine.list_rows(runrecord.connect(region.catalog_url), institution=INST, status="open")[-1]
    assert "already published for a patient with a different resident ID number and birth date" in entry["reason"]
    assert other not in entry["reason"] and mrn not in entry["reason"]

    from hub.lakehouse.tables import open_catalog

    patients = open_catalog(region.catalog_url, region.warehouse).load_table("recognition.patient").scan(
        row_filter=f"institution == '{INST}'").to_arrow()
    births = [r for r in patients.column("resource").to_pylist() if birth in r]
    assert births, "the original person's record must be unchanged"
