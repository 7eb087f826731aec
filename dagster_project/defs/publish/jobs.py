"""Jobs: publish the recognition zone for one institution partition, then update the recognition index.

Every run of an institution partition, however launched (sensor, schedule, backfill, UI),
carries one ``hub-db/<institution>.<feed>`` tag per source database it pulls from; the
production instance's run queue (deploy/dagster.yaml, `hub deploy config`) limits the runs
in progress per tag to the feed's ``max_connections`` in region.yaml.
"""

from dagster import AssetSelection, PartitionedConfig, define_asset_job

from dagster_project.defs.serving.assets import INDEX_KEY
from dagster_project.instance import source_tags
from dagster_project.partitions import institutions, workspace
from hub.region import load_region


def partition_tags(partition_key: str) -> dict[str, str]:
    """The source-database tags of the institution's runs (none without a region.yaml)."""
    if not (workspace() / "region.yaml").exists():
        return {}
    return source_tags(load_region(workspace()), partition_key)


publish_recognition = define_asset_job(
    "publish_recognition", selection=AssetSelection.groups("recognition") | AssetSelection.keys(INDEX_KEY),
    description="Pull every feed of one institution, publish its recognition-zone tables, and add its results to the recognition index.",
    partitions_def=institutions,
    config=PartitionedConfig(partitions_def=institutions, run_config_for_partition_key_fn=lambda _key: {},
                             tags_for_partition_key_fn=partition_tags),
)
