"""Assets: one training set per spec in trainsets/*.yaml, on demand.

A spec reads the zone it names at a lakehouse tag: a research-zone spec depends on the
research release (its tag is a release name), a recognition-zone spec on the tables its
views read. The set is written to ``<workspace>/trainsets/<name>/`` (Parquet per split and
a datasheet); the same spec on the same tag gives the same bytes.
"""

from pathlib import Path

from dagster import AssetKey, AssetsDefinition, Config, MaterializeResult, MetadataValue, asset

from dagster_project.defs.publish.checks import table_key
from dagster_project.defs.research.assets import RELEASE_KEY
from dagster_project.resources import HubResource
from hub.region import REPO_ROOT
from hub.trainset.build import Spec, build, load_spec

SPECS = REPO_ROOT / "trainsets"


class TrainsetConfig(Config):
    purpose: str = "training set"  # written to the access log


def _deps(spec: Spec) -> list[AssetKey]:
    if spec.zone == "research":
        return [RELEASE_KEY]
    return sorted({table_key(v["resource"]) for v in spec.views.values()} | {table_key("Patient")}, key=lambda k: k.path)


def trainset_asset(spec_path: Path) -> AssetsDefinition:
    """The asset of one training-set spec."""
    spec = load_spec(spec_path)

    @asset(
        key=AssetKey(["trainsets", spec.name]), deps=_deps(spec), group_name="trainsets",
        description=f"Training set {spec.name} ({spec_path.relative_to(REPO_ROOT)}): {spec.zone} zone at tag {spec.tag!r}, "
                    "Parquet per split and a datasheet under <workspace>/trainsets/",
    )
    def _trainset(config: TrainsetConfig, hub: HubResource) -> MaterializeResult:
        region = hub.region()
        out = region.workspace / "trainsets" / spec.name
        sheet = build(region, hub.keyring(), spec_path, out, config.purpose)
        return MaterializeResult(metadata={
            "tag": spec.tag, "out": str(out.resolve()),
            "dagster/row_count": sum(c["patients"] for c in sheet["splits"].values()),
            "splits": MetadataValue.json(sheet["splits"]), "files_sha256": MetadataValue.json(sheet["files_sha256"]),
        })

    return _trainset


TRAINSETS = [trainset_asset(p) for p in sorted(SPECS.glob("*.yaml"))]
