"""Assets: a research release (hub.research.build_release), on demand.

One materialization is one release: the research tables re-keyed, date-shifted and
k-anonymity gated, tagged with the release name. A release the risk gate refuses publishes
nothing and fails the step with the gate's reason (its risk report is stored either way).
Names are unique: give a new one per release, or leave it empty for the release id.
"""

from dagster import AssetKey, Config, Failure, MaterializeResult, MetadataValue, asset

from dagster_project.defs.publish.checks import table_key
from dagster_project.resources import HubResource
from hub.fhir.validate import RESOURCE_MODULES

RELEASE_KEY = AssetKey(["research", "release"])


class ReleaseConfig(Config):
    """The options of `hub research release`, with its defaults."""

    name: str | None = None  # also the Iceberg tag on every research table (a training-set spec's `tag`)
    k: int = 5
    max_suppression: float = 0.05
    purpose: str = "research release"
    quasi_identifiers: list[str] = ["birth_year", "sex", "institution"]


@asset(
    key=RELEASE_KEY,
    deps=[table_key(rt) for rt in RESOURCE_MODULES],
    group_name="research",
    description="Research release: the research zone's tables, re-keyed, date-shifted, k-anonymity gated and tagged with the release name",
)
def research_release(config: ReleaseConfig, hub: HubResource) -> MaterializeResult:
    """Build, gate and publish one research release from the current recognition zone."""
    from hub.research import build_release

    release = build_release(hub.region(), hub.keyring(), name=config.name, k=config.k, max_suppression=config.max_suppression,
                            purpose=config.purpose, quasi_identifiers=config.quasi_identifiers)
    r = release.report
    gate = {"k_required": r.k_required, "k_achieved": r.k_achieved, "people": r.people, "suppressed": r.suppressed,
            "birth_year_band": r.chosen_band, "quasi_identifiers": ", ".join(r.quasi_identifiers)}
    if release.status != "published":
        raise Failure(description=f"release {release.name!r} {release.status}: {r.reason}", metadata={"release": release.name, **gate})
    return MaterializeResult(metadata={
        "release": release.name, "release_id": release.release_id, **gate,
        "dagster/row_count": sum(release.rows.values()),
        "rows": MetadataValue.json(release.rows), "snapshots_written": MetadataValue.json({t: str(s) for t, s in release.snapshots.items()}),
    })
