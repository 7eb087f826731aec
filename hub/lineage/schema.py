"""The run record's tables, all of them, in one module at the bottom: it imports nothing of hub.

Runs and their counts, the run lock, watermarks, quarantine, deletions found at the source,
research releases, signed manifests, the access log and NDJSON file positions live in the
run-record database (the same database as the Iceberg catalog: SQLite by default,
PostgreSQL in production). Every module that records something imports its table from here,
so creating the schema (``hub.lineage.runrecord.connect``) needs no other module.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()
#: research release states that hold a release's name: no other release may take it
LIVE = ("building", "published")

# ---- hub/lineage/runrecord.py ----------------------------------------------------------

runs = sa.Table(
    "hub_runs", metadata,
    sa.Column("run_id", sa.String(40), primary_key=True),
    sa.Column("institution", sa.String(64), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("key_id", sa.String(32)),
    sa.Column("ruleset", sa.String(128)),
    sa.Column("code_version", sa.String(32)),
    sa.Column("report", sa.Text),
)

run_counts = sa.Table(
    "hub_run_counts", metadata,
    sa.Column("run_id", sa.String(40), nullable=False, index=True),
    sa.Column("institution", sa.String(64), nullable=False),
    sa.Column("feed", sa.String(64), nullable=False),
    sa.Column("mapping", sa.String(128), nullable=False),
    sa.Column("source_table", sa.String(128), nullable=False),
    sa.Column("resource_type", sa.String(64), nullable=False),
    sa.Column("rows_read", sa.Integer, nullable=False),
    sa.Column("published", sa.Integer, nullable=False),
    sa.Column("quarantined", sa.Integer, nullable=False),
    sa.Column("written", sa.Integer, nullable=False),
    sa.Column("unchanged", sa.Integer, nullable=False),
)

run_locks = sa.Table(
    "hub_run_locks", metadata,
    sa.Column("institution", sa.String(64), primary_key=True),
    sa.Column("run_id", sa.String(80), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("process", sa.String(64), nullable=False),  # "<pid>:<start time>", so a reused pid is not mistaken for the holder
    sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
)

# ---- hub/watermarks.py ---------------------------------------------------------------

watermarks = sa.Table(
    "hub_watermarks", metadata,
    sa.Column("institution", sa.String(64), primary_key=True),
    sa.Column("feed", sa.String(64), primary_key=True),
    sa.Column("block", sa.String(200), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("value", sa.String(200), nullable=False),
    sa.Column("run_id", sa.String(80), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

# ---- hub/quarantine.py ---------------------------------------------------------------

quarantine = sa.Table(
    "hub_quarantine", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(40), nullable=False, index=True),
    sa.Column("institution", sa.String(64), nullable=False),
    sa.Column("feed", sa.String(64), nullable=False),
    sa.Column("mapping", sa.String(128), nullable=False),
    sa.Column("source_table", sa.String(128), nullable=False),
    sa.Column("resource_type", sa.String(64), nullable=False),
    sa.Column("source_key_hash", sa.String(64), nullable=False, index=True),
    sa.Column("cause", sa.String(256), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("key_id", sa.String(32), nullable=False),
    sa.Column("nonce", sa.LargeBinary, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    # open: the row is not published (a run that rejects it again updates this entry in place).
    # resolved: a later run published it. superseded: a state of entries made before one
    # entry per source row was kept. closed_by: the run that closed the entry.
    sa.Column("status", sa.String(16), nullable=False, default="open", index=True),
    sa.Column("closed_by", sa.String(80)),
)

# ---- hub/research.py -----------------------------------------------------------------

releases = sa.Table(
    "hub_releases", metadata,
    sa.Column("release_id", sa.String(80), primary_key=True),
    sa.Column("name", sa.String(120), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # building | published | refused | failed
    sa.Column("k", sa.Integer, nullable=False),
    sa.Column("ruleset", sa.String(128), nullable=False),
    sa.Column("key_id", sa.String(32), nullable=False),
    sa.Column("risk_report", sa.Text, nullable=False),
    sa.Column("snapshots", sa.Text),  # research tables written: {resource type: snapshot id}
)
# One live release per name, enforced by the database (a refused or failed attempt frees it).
NAME_INDEX = sa.Index(
    "ux_hub_releases_live_name", releases.c.name, unique=True,
    sqlite_where=releases.c.status.in_(LIVE), postgresql_where=releases.c.status.in_(LIVE),
)

# ---- hub/pipeline.py -----------------------------------------------------------------

deletions = sa.Table(
    "hub_deletions", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(80), nullable=False, index=True),
    sa.Column("institution", sa.String(64), nullable=False),
    sa.Column("resource_type", sa.String(64), nullable=False),
    sa.Column("resource_id", sa.String(64), nullable=False, index=True),
    sa.Column("source_table", sa.String(128), nullable=False),
    sa.Column("source_key_hash", sa.String(64), nullable=False),
    sa.Column("detected_at", sa.DateTime(timezone=True), nullable=False),
)

# ---- hub/lineage/manifests.py --------------------------------------------------------

manifests = sa.Table(
    "hub_manifests", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("run_id", sa.String(80), nullable=False, index=True),
    sa.Column("key_id", sa.String(32), nullable=False),  # id of the signing key (signing.key_id_of)
    sa.Column("body", sa.Text, nullable=False),  # canonical JSON, includes prev_hash
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("signature", sa.String(128), nullable=False),
    sa.Column("public_key", sa.String(64), nullable=False),  # as claimed by the writer; verify never trusts it
)

# ---- hub/lineage/access.py -----------------------------------------------------------

access_log = sa.Table(
    "hub_access_log", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("who", sa.String(120), nullable=False, index=True),
    sa.Column("action", sa.String(64), nullable=False),  # research-release, quarantine-show, lineage-trace ...
    sa.Column("purpose", sa.String(200), nullable=False),
    sa.Column("what", sa.Text, nullable=False),  # JSON: tables, snapshots, rows, entry ids
    sa.Column("outcome", sa.String(16), nullable=False),  # success | refused | failure
    sa.Column("prev_hash", sa.String(64)),  # hash of the entry before (GENESIS for the first)
    sa.Column("hash", sa.String(64)),  # entry_hash of this entry; NULL only in logs written before the chain existed
)
PREV_INDEX = sa.Index("ux_hub_access_log_prev", access_log.c.prev_hash, unique=True)  # two entries never share a predecessor

# ---- hub/sources/ndjson.py -----------------------------------------------------------

positions = sa.Table(
    "hub_ndjson_positions", metadata,
    sa.Column("institution", sa.String(64), primary_key=True),
    sa.Column("feed", sa.String(64), primary_key=True),
    sa.Column("file", sa.String(512), primary_key=True),
    sa.Column("line", sa.Integer, nullable=False),  # lines read (the next line to read is line + 1)
    sa.Column("offset", sa.BigInteger, nullable=False),  # bytes read, of the decompressed text for gzip
    sa.Column("size", sa.BigInteger, nullable=False),  # the file's size on disk when read
    sa.Column("mtime", sa.Float, nullable=False),
    sa.Column("prefix", sa.String(64), nullable=False),  # SHA-256 of its first min(size, PREFIX_BYTES) bytes
    sa.Column("run_id", sa.String(80), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

lines = sa.Table(
    "hub_ndjson_lines", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(80), nullable=False, index=True),
    sa.Column("institution", sa.String(64), nullable=False),
    sa.Column("feed", sa.String(64), nullable=False),
    sa.Column("file", sa.String(512), nullable=False),
    sa.Column("line", sa.Integer, nullable=False),
    sa.Column("resource_type", sa.String(64), nullable=False),
    sa.Column("resource_id", sa.String(64), nullable=False, index=True),
    sa.Column("line_hash", sa.String(64), nullable=False),  # keyed: recomputable by the hub only
)
