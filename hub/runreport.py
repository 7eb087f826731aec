"""What a run did, in plain data: counts per mapping block (or file) and the run report.

Safe to print, to store in the run record and to attach as Dagster metadata: counts, causes
(element + problem, never a value), elements dropped, snapshots, the manifest.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class BlockCount:
    feed: str
    mapping: str
    source_table: str
    resource_type: str
    rows_read: int = 0
    published: int = 0
    quarantined: int = 0
    failed_validation: int = 0
    written: int = 0
    unchanged: int = 0


@dataclass
class RunReport:
    """What one run did for one institution; safe to print and to attach as metadata."""

    run_id: str
    institution: str
    key_id: str
    ruleset: str
    counts: list[BlockCount] = field(default_factory=list)
    causes: Counter = field(default_factory=Counter)
    uncovered: Counter = field(default_factory=Counter)
    dropped_by_rule: Counter = field(default_factory=Counter)
    snapshots: dict[str, int] = field(default_factory=dict)
    warehouse: str = ""
    manifest: tuple[int, str] | None = None  # (sequence number, hash) of the signed manifest
    deleted: dict[str, int] = field(default_factory=dict)  # rows removed because the source deleted them
    removed_old_key: dict[str, int] = field(default_factory=dict)  # rows made with an older key, removed by re-keying
    abandoned_runs: list[str] = field(default_factory=list)  # earlier runs found killed, now marked failed
    orphans_removed: int = 0  # data files those (or failed) runs wrote but never committed
    #: per feed:table, rows whose watermark column is NULL: an incremental pull cannot see them; --full reads them
    unwatermarked: dict[str, int] = field(default_factory=dict)
    leak_scan: dict = field(default_factory=dict)  # rows scanned and code-system exemptions used
    sources: dict = field(default_factory=dict)  # per file feed: files read from/to which line, references outside the export
    commit_retries: dict[str, int] = field(default_factory=dict)  # per table: commits retried after another writer's commit
    window: tuple[str, str] | None = None  # a windowed run: [start, end) of its time columns (ISO), else None
    #: a windowed run: the blocks ("feed:table") and file feeds ("feed:*") it did not pull; the regular run pulls them
    outside_window: list[str] = field(default_factory=list)
    #: a windowed run: the run that first brought the institution's Organization and Patient rows up to date
    referenced_run: str | None = None

    def by_resource(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for c in self.counts:
            agg = out.setdefault(c.resource_type, {"read": 0, "published": 0, "quarantined": 0, "failed_validation": 0, "written": 0, "unchanged": 0})
            agg["read"] += c.rows_read
            agg["published"] += c.published
            agg["quarantined"] += c.quarantined
            agg["failed_validation"] += c.failed_validation
            agg["written"] += c.written
            agg["unchanged"] += c.unchanged
        return out

    def as_dict(self) -> dict:
        return {
            "run_id": self.run_id, "institution": self.institution, "key_id": self.key_id,
            "ruleset": self.ruleset, "by_resource": self.by_resource(),
            "counts": [c.__dict__ for c in self.counts],
            "quarantine_causes": dict(self.causes.most_common()),
            "uncovered_elements_dropped": dict(self.uncovered.most_common()),
            "elements_dropped_by_rule": dict(self.dropped_by_rule.most_common()),
            "snapshots": self.snapshots, "warehouse": self.warehouse,
            "manifest": {"seq": self.manifest[0], "hash": self.manifest[1]} if self.manifest else None,
            "deleted_at_source": self.deleted, "removed_old_key": self.removed_old_key,
            "abandoned_runs": self.abandoned_runs, "orphan_files_removed": self.orphans_removed,
            "rows_without_watermark": self.unwatermarked,
            "leak_scan": self.leak_scan,
            "sources": self.sources,
            "commit_retries": self.commit_retries,
            "window": list(self.window) if self.window else None,
            "outside_window": self.outside_window,
            "referenced_run": self.referenced_run,
        }
