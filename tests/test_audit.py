"""Tamper-evident history: editing one byte of a data file or a manifest breaks `hub audit verify`, by name."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from hub.lineage import catalog as runcat
from hub.lineage.manifests import manifests, verify
from tests.conftest import publish_region

pytestmark = pytest.mark.slow


@pytest.fixture()
def published(tmp_path, keys):
    region, _, reports = publish_region(tmp_path, keys, 10)
    return region, runcat.connect(region.catalog_url), list(reports.values())


def test_untouched_history_verifies(published, keys):
    region, engine, reports = published
    report = verify(engine, keys)
    assert report.ok and report.manifests == 3 and report.files > 20
    assert [r.manifest[0] for r in reports] == [1, 2, 3]


def test_one_byte_in_a_data_file_is_named(published, keys):
    region, engine, _ = published
    with engine.connect() as conn:
        body = json.loads(conn.execute(sa.select(manifests.c.body).where(manifests.c.seq == 2)).scalar_one())
    victim = body["tables"]["recognition.observation"]["files"][0]["path"].removeprefix("file://")
    data = bytearray(open(victim, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(victim, "wb").write(bytes(data))

    report = verify(engine, keys)
    assert not report.ok
    assert report.breaks == [f"manifest 2 (run {body['run_id']}): recognition.observation data file altered: {victim}"]


def test_an_edited_manifest_is_named(published, keys):
    region, engine, _ = published
    with engine.begin() as conn:
        body = conn.execute(sa.select(manifests.c.body).where(manifests.c.seq == 1)).scalar_one()
        conn.execute(manifests.update().where(manifests.c.seq == 1).values(body=body.replace('"rows_read":', '"rows_read":1', 1)))
    report = verify(engine, keys)
    assert any(b.startswith("manifest 1 ") and "edited after signing" in b for b in report.breaks)


def test_a_removed_manifest_breaks_the_chain(published, keys):
    region, engine, _ = published
    with engine.begin() as conn:
        conn.execute(manifests.delete().where(manifests.c.seq == 2))
    report = verify(engine, keys)
    assert any(b.startswith("manifest 3 ") and "chain broken" in b for b in report.breaks)


def test_cli_exits_nonzero_on_a_break(published, keys, monkeypatch):
    from typer.testing import CliRunner

    from hub.cli import app

    region, engine, _ = published
    monkeypatch.setenv("HUB_MASTER_KEY", keys.master.hex())
    with engine.begin() as conn:
        conn.execute(manifests.update().where(manifests.c.seq == 3).values(signature="00" * 64))
    result = CliRunner().invoke(app, ["audit", "verify", "--workspace", str(region.workspace)])
    assert result.exit_code == 1 and "manifest 3" in result.stdout and "signature does not verify" in result.stdout
