"""Identifiers planted in the sources never reach any sink: recognition, research, index, training set.

A vendor-A region is published after every free-text column a shipped mapping carries into
a string (hospital level, department, diagnosis name and note, drug name, dose unit, usage
note, panel name, item name, text results, units, reference ranges) has had appended a
resident ID number, a mobile number and the row's own patient MRN, each written in an
evasive form. Every output hub writes is then searched, with the same detector and the
planted MRNs as known values, and with a digits-only comparison as an independent check.
"""

from __future__ import annotations

import json
import re
import sqlite3

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from hub.demo.generator import generate_region
from hub.identifiers import find_identifiers, resident_id_check_char
from hub.lakehouse.tables import open_catalog
from hub.pipeline import run_institution
from hub.recognition.index import build as build_index
from hub.recognition.index import connect as connect_index
from hub.recognition.index import index_url
from hub.region import REPO_ROOT, load_region
from hub.research import build_release
from hub.trainset.build import build as build_trainset

pytestmark = pytest.mark.slow
INST = "city-first"
ID_FIRST17 = "33010619850612123"
ID_NUMBER = ID_FIRST17 + resident_id_check_char(ID_FIRST17)
MOBILE = "13912345678"
SPACED_ID = f"{ID_NUMBER[:6]} {ID_NUMBER[6:14]} {ID_NUMBER[14:]}"
FULLWIDTH_MOBILE = "".join(chr(ord(c) + 0xFEE0) for c in MOBILE)
#: table -> (free-text columns, how the row reaches its patient's MRN)
PLANT = {
    "his": {
        "hospital": (["hosp_level"], None),
        "visit": (["dept_name"], "mrn"),
        "diagnosis": (["diag_name", "note"], "(SELECT mrn FROM visit v WHERE v.visit_id = diagnosis.visit_id)"),
        "prescription": (["drug_name", "dose_unit", "usage_note"], "(SELECT mrn FROM visit v WHERE v.visit_id = prescription.visit_id)"),
    },
    "lis": {
        "lab_order": (["panel_name"], "patient_mrn"),
        "lab_result": (["item_name", "result_value", "unit", "ref_range"],
                       "(SELECT patient_mrn FROM lab_order o WHERE o.order_id = lab_result.order_id)"),
    },
}


def _spaced(mrn: str) -> str:
    return " ".join(mrn)


@pytest.fixture(scope="module")
def planted(tmp_path_factory, keys):
    ws = tmp_path_factory.mktemp("planted") / "ws"
    generate_region(ws, patients=60)
    region = load_region(ws)
    mrns: set[str] = set()
    for feed in region.institution(INST).feeds:
        conn = sqlite3.connect(feed.url.removeprefix("sqlite:///"))
        conn.create_function("spaced", 1, lambda v: _spaced(v) if v else "")
        for table, (columns, mrn_sql) in PLANT[feed.name].items():
            mrn = mrn_sql or "''"
            mrns.update(m for (m,) in conn.execute(f"SELECT DISTINCT {mrn} FROM {table}") if m)
            sets = ", ".join(f"{c} = coalesce({c}, '') || ' 身份证 SFZ{SPACED_ID} 手机 {FULLWIDTH_MOBILE} 病案号 ' || spaced({mrn})"
                             for c in columns)
            conn.execute(f"UPDATE {table} SET {sets}")
        conn.commit()
        conn.close()
    reports = {i.id: run_institution(region, i.id, keys) for i in region.institutions}
    assert reports[INST].by_resource()["Observation"]["published"] > 0
    build_index(region, connect_index(index_url(region)), keys)
    assert build_release(region, keys, name="demo-release", k=2, max_suppression=0.9).status == "published"
    out = tmp_path_factory.mktemp("trainset")
    build_trainset(region, keys, REPO_ROOT / "trainsets" / "t2dm-hba1c.yaml", out / "long", purpose="planted identifiers test")
    build_trainset(region, keys, REPO_ROOT / "trainsets" / "t2dm-hba1c-patient.yaml", out / "per-patient", purpose="planted identifiers test")
    return region, out, sorted(m for m in mrns if len(m) >= 4)


def _leaks(text: str, mrns: list[str]) -> list[str]:
    found = [f.kind for f in find_identifiers(text, known=tuple(mrns), document=True)]
    digits = re.sub(r"\D", "", text.translate({0xFEE0 + ord(d): d for d in "0123456789"}))
    found += [v for v in (ID_NUMBER[:17], MOBILE) if v in digits]
    return found


def test_planted_values_are_really_in_the_sources(planted):
    region, _, mrns = planted
    url = next(f.url for f in region.institution(INST).feeds if f.name == "lis")
    with sa.create_engine(url).connect() as conn:
        text = " ".join(r[0] for r in conn.execute(sa.text("SELECT item_name FROM lab_result LIMIT 20")))
    assert {"resident-id", "mobile", "known"} <= set(_leaks(text, mrns))  # the positive control


def test_no_planted_identifier_in_any_lakehouse_table(planted):
    region, _, mrns = planted
    icat = open_catalog(region.catalog_url, region.warehouse)
    tables = [t for ns in ("recognition", "research") for t in icat.list_tables(ns)]
    assert len(tables) >= 16
    for ident in tables:
        data = icat.load_table(ident).scan().to_arrow()
        for column in ("resource", "code", "patient", "source_key_hash"):
            text = "\n".join(v for v in data.column(column).to_pylist() if v)
            assert _leaks(text, mrns) == [], (ident, column)


def test_no_planted_identifier_in_the_recognition_index(planted):
    region, _, mrns = planted
    with sqlite3.connect(index_url(region).removeprefix("sqlite:///")) as conn:
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            rows = conn.execute(f"SELECT * FROM {table}").fetchall()
            text = "\n".join(str(v) for row in rows for v in row if v is not None)
            assert _leaks(text, mrns) == [], table


def test_no_planted_identifier_in_the_training_set(planted):
    _, out, mrns = planted
    files = sorted(out.rglob("*"))
    assert {"labels.parquet", "labs.parquet", "patients.parquet"} <= {f.name for f in files}  # both shapes
    assert sum(pq.read_metadata(f).num_rows for f in files if f.name == "patients.parquet") > 0
    for f in (f for f in files if f.is_file()):
        if f.suffix == ".parquet":
            table = pq.read_table(f)
            text = "\n".join(str(v) for col in table.columns for v in col.to_pylist() if v is not None)
        else:
            text = f.read_text(encoding="utf-8")
        assert _leaks(text, mrns) == [], f.name


def test_text_survives_around_the_scrubbed_identifiers(planted):
    region, _, _ = planted
    icat = open_catalog(region.catalog_url, region.warehouse)
    conditions = icat.load_table("recognition.condition").scan(row_filter=f"institution == '{INST}'").to_arrow()
    texts = [json.loads(r)["code"].get("text", "") for r in conditions.column("resource").to_pylist()]
    assert texts and all("身份证" in t and "[id-number]" in t and "[phone]" in t for t in texts)
