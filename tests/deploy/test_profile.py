"""The production profile's configuration, without servers: the executor HUB_EXECUTOR names,
the Celery settings a killed worker relies on, one run-queue limit per source database from
region.yaml's max_connections, and the run tags that name an institution's databases."""

from __future__ import annotations

import shutil

import pytest
import yaml

from dagster_project.instance import production_config, source_databases, source_tags
from dagster_project.launch import celery_config, executor_from_env
from hub.demo.generator import generate_region
from hub.region import load_region
from hub.yamlio import ConfigError


@pytest.fixture(scope="module")
def region_dir(tmp_path_factory):
    ws = tmp_path_factory.mktemp("ws")
    generate_region(ws, patients=4)
    return ws


def _edit(ws, change):
    doc = yaml.safe_load((ws / "region.yaml").read_text(encoding="utf-8"))
    change(doc)
    (ws / "region.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")


def test_default_executor_unless_celery_is_named(monkeypatch):
    monkeypatch.delenv("HUB_EXECUTOR", raising=False)
    assert executor_from_env() is None
    monkeypatch.setenv("HUB_EXECUTOR", "celery")
    assert executor_from_env().name == "celery"
    monkeypatch.setenv("HUB_EXECUTOR", "dask")
    with pytest.raises(ValueError, match="dask"):
        executor_from_env()


def test_celery_settings_survive_a_killed_worker_and_urls_come_from_the_environment(monkeypatch):
    monkeypatch.delenv("HUB_CELERY_CONFIG", raising=False)
    monkeypatch.delenv("HUB_CELERY_BACKEND", raising=False)
    monkeypatch.setenv("HUB_CELERY_BROKER", "pyamqp://hub:pw@mq-host:5672//")
    config = celery_config()
    assert config["config_source"]["task_acks_late"] is True
    assert config["config_source"]["task_reject_on_worker_lost"] is True
    assert config["config_source"]["worker_prefetch_multiplier"] == 1
    assert config["broker"] == "pyamqp://hub:pw@mq-host:5672//"
    assert config["backend"].startswith("redis://")


def test_a_misspelt_celery_setting_names_file_line_and_field(tmp_path, monkeypatch):
    bad = tmp_path / "celery.yaml"
    bad.write_text("execution:\n  config:\n    broker: pyamqp://x//\n    acks_late: true\n", encoding="utf-8")
    monkeypatch.setenv("HUB_CELERY_CONFIG", str(bad))
    with pytest.raises(ConfigError) as err:
        celery_config()
    assert f"{bad}:4" in str(err.value) and "execution.config.acks_late" in str(err.value)


def test_one_queue_limit_per_source_database(region_dir, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(region_dir, ws)

    def change(doc):
        first, second = doc["institutions"][0], doc["institutions"][1]
        first["feeds"][0]["max_connections"] = 3
        second["feeds"][1]["url"] = first["feeds"][1]["url"]  # a regional LIS both pull from
        second["feeds"][1]["max_connections"] = 2
        first["feeds"][1]["max_connections"] = 4

    _edit(ws, change)
    region = load_region(ws)
    first, second = region.institutions[0].id, region.institutions[1].id
    limits = source_databases(region)
    assert limits[f"hub-db/{first}.his"] == 3
    assert limits[f"hub-db/{first}.lis"] == 2  # shared: the smaller limit
    assert f"hub-db/{second}.lis" not in limits and limits[f"hub-db/{second}.his"] == 1  # the default
    assert source_tags(region, second) == {f"hub-db/{second}.his": "pull", f"hub-db/{first}.lis": "pull"}

    doc = yaml.safe_load(production_config(region, max_concurrent_runs=6))
    queue = doc["run_coordinator"]["config"]
    assert queue["max_concurrent_runs"] == 6
    assert {(x["key"], x["limit"]) for x in queue["tag_concurrency_limits"]} == set(limits.items())
    assert doc["storage"]["postgres"]["postgres_url"] == {"env": "HUB_DAGSTER_PG_URL"}


def test_max_connections_must_be_a_positive_integer(region_dir, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(region_dir, ws)
    _edit(ws, lambda doc: doc["institutions"][0]["feeds"][0].update(max_connections=0))
    with pytest.raises(ConfigError) as err:
        load_region(ws)
    assert "region.yaml:" in str(err.value) and ".max_connections" in str(err.value)


def test_runs_of_an_institution_partition_carry_its_database_tags(region_dir, monkeypatch):
    from dagster_project.definitions import defs

    monkeypatch.setenv("HUB_WORKSPACE", str(region_dir))
    job = defs.resolve_job_def("publish_recognition")
    iid = load_region(region_dir).institutions[0].id
    tags = job.get_tags_for_partition_key(iid, selected_asset_keys=None)
    assert tags[f"hub-db/{iid}.his"] == "pull" and tags[f"hub-db/{iid}.lis"] == "pull"
