"""Jobs: publish the recognition zone for one institution partition, then update the recognition index."""

from dagster import AssetSelection, define_asset_job

from dagster_project.defs.serving.assets import INDEX_KEY

publish_recognition = define_asset_job(
    "publish_recognition", selection=AssetSelection.groups("recognition") | AssetSelection.keys(INDEX_KEY),
    description="Pull every feed of one institution, publish its recognition-zone tables, and add its results to the recognition index.",
)
