"""Jobs: one op each, calling hub.lakehouse.maintenance (all logic lives there).

- ``lakehouse_compaction``: rewrite each partition's small files (rows unchanged); a
  partition whose institution is being published is skipped until the next run.
- ``lakehouse_expiry``: expire snapshots older than N days, keeping the last K and every
  tagged one (metadata only).
- ``lakehouse_orphans``: remove data files, manifest lists and manifests no snapshot reads,
  older than an hour (files of runs killed before their commit, and what expiry left).
"""

from dagster import Config, Output, job, op

from dagster_project.resources import HubResource
from hub.lakehouse import maintenance
from hub.lakehouse.orphans import GRACE_SECONDS


class CompactionConfig(Config):
    small_mb: float = maintenance.SMALL_FILE_BYTES / 1024 / 1024
    min_files: int = maintenance.MIN_FILES
    lock_wait_seconds: float = 60.0


class ExpiryConfig(Config):
    older_than_days: float = maintenance.EXPIRE_AFTER_DAYS
    keep_last: int = maintenance.KEEP_LAST


class OrphansConfig(Config):
    older_than_seconds: int = GRACE_SECONDS


@op(description="Compact small data files of every table, partition by partition (rows unchanged).")
def compact_tables(config: CompactionConfig, hub: HubResource) -> Output[dict]:
    done, manifest = maintenance.compact_region(hub.region(), small_bytes=int(config.small_mb * 1024 * 1024),
                                                min_files=config.min_files, lock_wait=config.lock_wait_seconds)
    rewritten = [c for c in done if c.snapshot_id is not None]
    return _summary({
        "partitions_compacted": len(rewritten), "files_before": sum(c.files_before for c in rewritten),
        "files_after": sum(c.files_after for c in rewritten), "commit_retries": sum(c.retries for c in done),
        "skipped_busy": sum(1 for c in done if c.skipped and "lock" in c.skipped), "manifest": manifest[0] if manifest else None})


@op(description="Expire old snapshots of every table, keeping the last K and every tagged snapshot.")
def expire_snapshots(config: ExpiryConfig, hub: HubResource) -> Output[dict]:
    done, manifest = maintenance.expire_region(hub.region(), older_than_days=config.older_than_days, keep_last=config.keep_last)
    return _summary({
        "snapshots_expired": sum(len(e.expired) for e in done), "tagged_kept": sum(len(e.tagged_kept) for e in done),
        "commit_retries": sum(e.retries for e in done), "manifest": manifest[0] if manifest else None})


@op(description="Remove data and manifest files no snapshot reads (killed runs, expired snapshots), older than the grace period.")
def remove_orphans(config: OrphansConfig, hub: HubResource) -> Output[dict]:
    from hub.lakehouse.tables import open_catalog

    region = hub.region()
    icat = open_catalog(region.catalog_url, region.warehouse)
    found = maintenance.remove_orphans(icat, [ns[0] for ns in icat.list_namespaces()], older_than=config.older_than_seconds,
                                       metadata=True)
    return _summary({"files_removed": len(found), "bytes_removed": sum(o.bytes for o in found)})


def _summary(doc: dict) -> Output[dict]:
    """The op's result, also shown as its output metadata in the Dagster UI."""
    return Output(doc, metadata={k: v for k, v in doc.items() if v is not None})


@job(description="Compact small files of every lakehouse table.")
def lakehouse_compaction():
    compact_tables()


@job(description="Expire old lakehouse snapshots (tagged ones kept).")
def lakehouse_expiry():
    expire_snapshots()


@job(description="Remove lakehouse files no snapshot reads.")
def lakehouse_orphans():
    remove_orphans()
