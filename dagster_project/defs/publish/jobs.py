"""Jobs: publish the recognition zone for one institution partition."""

from dagster import AssetSelection, define_asset_job

from dagster_project.partitions import institutions

publish_recognition = define_asset_job(
    "publish_recognition", selection=AssetSelection.groups("recognition"), partitions_def=institutions,
    description="Pull every feed of one institution and publish its recognition-zone tables.",
)
