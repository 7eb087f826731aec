"""The same mappings pull from real PostgreSQL and MariaDB servers (URLs from configuration)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
import yaml

from hub.demo.generator import build_region, write_database
from hub.lakehouse.tables import open_catalog
from hub.pipeline import run_institution
from hub.region import load_region
from tests.conftest import with_signing_key

PG = "postgresql+psycopg://${HUB_TEST_PG_USER}@127.0.0.1:5432/test"
MARIADB = "mysql+pymysql://root@127.0.0.1:3306/test?charset=utf8mb4"


def _reachable(url: str) -> None:
    try:
        with sa.create_engine(url).connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"database server not reachable at {url.split('@')[-1]}: start it (.ci/run does): {exc.orig}")


@pytest.fixture()
def servers(monkeypatch):
    monkeypatch.setenv("HUB_TEST_PG_USER", "postgres")
    pg = PG.replace("${HUB_TEST_PG_USER}", "postgres")
    _reachable(pg)
    _reachable(MARIADB)
    return pg


@pytest.mark.postgres
@pytest.mark.mariadb
@pytest.mark.slow
def test_vendor_b_on_postgres_and_mariadb_matches_sqlite(servers, demo, keys, tmp_path):
    sqlite_region, _, sqlite_reports = demo
    rows = build_region(40)["xihu-second"]  # the demo fixture's data for this institution
    write_database(servers, "his_vendor_b", rows["his_vendor_b"])
    write_database(MARIADB, "lis_vendor_b", rows["lis_vendor_b"])
    (tmp_path / "region.yaml").write_text(yaml.safe_dump(with_signing_key(tmp_path, {
        "region": "servers",
        "institutions": [{
            "id": "xihu-second", "name": "西湖区第二人民医院",
            "feeds": [
                {"name": "his", "mapping": "his_vendor_b", "url": PG},  # user from ${HUB_TEST_PG_USER}
                {"name": "lis", "mapping": "lis_vendor_b", "url": MARIADB},
            ],
        }],
    }), allow_unicode=True), encoding="utf-8")
    region = load_region(tmp_path)
    assert "postgres@" in region.institutions[0].feeds[0].url

    report = run_institution(region, "xihu-second", keys)

    def counts(rep):
        return {k: (v["read"], v["published"], v["quarantined"]) for k, v in rep.by_resource().items()}

    assert counts(report) == counts(sqlite_reports["xihu-second"])
    for table in ("observation", "patient", "encounter"):
        got = open_catalog(region.catalog_url, region.warehouse).load_table(f"recognition.{table}").scan().to_arrow()
        want = open_catalog(sqlite_region.catalog_url, sqlite_region.warehouse).load_table(f"recognition.{table}").scan(
            row_filter="institution == 'xihu-second'").to_arrow()
        assert sorted(zip(got["id"].to_pylist(), got["content_hash"].to_pylist(), strict=True)) == sorted(
            zip(want["id"].to_pylist(), want["content_hash"].to_pylist(), strict=True)
        ), table


@pytest.mark.postgres
@pytest.mark.mariadb
@pytest.mark.slow
def test_wide_table_vendor_on_postgres_and_his_on_mariadb(servers, keys, tmp_path):
    from hub.demo.generator import generate_onboarding_sources

    local = generate_onboarding_sources(tmp_path / "local", patients=40)  # the same rows, in SQLite
    for system, schema, url in (("his", "his_vendor_a", MARIADB), ("lis", "lis_vendor_c", servers)):
        source = sa.create_engine(local[system])
        md = sa.MetaData()
        md.reflect(source)
        with source.connect() as conn:
            rows = {t.name: [dict(r._mapping) for r in conn.execute(sa.select(t))] for t in md.sorted_tables}
        write_database(url, schema, rows)
    region_doc = {"region": "servers", "institutions": [{"id": "xixi-chc", "feeds": [
        {"name": "his", "mapping": "his_vendor_a", "url": MARIADB},
        {"name": "lis", "mapping": "lis_vendor_c", "url": PG},
    ]}]}
    (tmp_path / "region.yaml").write_text(yaml.safe_dump(with_signing_key(tmp_path, region_doc)), encoding="utf-8")
    on_servers = run_institution(load_region(tmp_path), "xixi-chc", keys)

    (tmp_path / "sqlite").mkdir()
    region_doc["institutions"][0]["feeds"] = [
        {"name": "his", "mapping": "his_vendor_a", "url": local["his"]},
        {"name": "lis", "mapping": "lis_vendor_c", "url": local["lis"]},
    ]
    (tmp_path / "sqlite" / "region.yaml").write_text(yaml.safe_dump(with_signing_key(tmp_path / "sqlite", region_doc)), encoding="utf-8")
    on_sqlite = run_institution(load_region(tmp_path / "sqlite"), "xixi-chc", keys)

    def counts(rep):
        return {k: (v["read"], v["published"], v["quarantined"]) for k, v in rep.by_resource().items()}

    assert counts(on_servers) == counts(on_sqlite)
    assert counts(on_servers)["Observation"][0] > 50


@pytest.fixture()
def pg_catalog_db(servers):
    """A fresh PostgreSQL database for the Iceberg and run record, dropped afterwards."""
    import secrets

    name = f"hub_catalog_{secrets.token_hex(4)}"
    admin = sa.create_engine(servers, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield servers.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.mark.postgres
@pytest.mark.slow
def test_catalog_on_postgres(pg_catalog_db, keys, tmp_path):
    from hub.demo.generator import generate_region
    from hub.lineage import runrecord
    from hub.lineage.audit import verify_region

    generate_region(tmp_path, patients=15)
    doc = yaml.safe_load((tmp_path / "region.yaml").read_text(encoding="utf-8"))
    doc["catalog"] = pg_catalog_db  # the only change: a PostgreSQL catalog URL
    (tmp_path / "region.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    region = load_region(tmp_path)
    assert region.catalog_url.startswith("postgresql")

    first = run_institution(region, "city-first", keys)
    second = run_institution(region, "city-first", keys)
    assert all(c["written"] == 0 for c in second.by_resource().values())
    obs = open_catalog(region.catalog_url, region.warehouse).load_table("recognition.observation").scan().to_arrow()
    assert obs.num_rows == first.by_resource()["Observation"]["published"]
    engine = runrecord.connect(region.catalog_url)
    with engine.connect() as conn:
        tables = set(sa.inspect(conn).get_table_names())
    assert {"iceberg_tables", "hub_runs", "hub_quarantine", "hub_manifests", "hub_watermarks"} <= tables
    assert verify_region(region).ok


@pytest.mark.postgres
@pytest.mark.slow
def test_recognition_index_on_postgres(pg_catalog_db, keys, tmp_path):
    import datetime as dt

    from hub.demo.generator import canary, generate_region
    from hub.recognition.index import build, connect, index_url
    from hub.recognition.query import patient_for, query
    from hub.recognition.rules import load_rules

    generate_region(tmp_path, patients=10)
    doc = yaml.safe_load((tmp_path / "region.yaml").read_text(encoding="utf-8"))
    doc["recognition_index"] = pg_catalog_db
    (tmp_path / "region.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    region = load_region(tmp_path)
    for inst in region.institutions:
        run_institution(region, inst.id, keys)
    index = connect(index_url(region))
    assert index.dialect.name == "postgresql"
    assert build(region, index) > 0 and build(region, index) == 0  # incremental: nothing new the second time
    patient = patient_for(index, keys, "urn:oid:2.16.156.10011.1.3", canary().id_number)
    verdicts = query(index, load_rules(), patient, "beishan-chc", at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert {v.institution for v in verdicts} >= {"city-first", "xihu-second"}
