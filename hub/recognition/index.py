"""The recognition index: latest results per patient, item and issuing institution, for serving.

Built from the recognition zone's Observation table into a SQL store (SQLite in the
workspace by default, any SQLAlchemy URL in production). Incremental: each build reads
only rows published since the previous build, and keeps per (patient, item, institution)
the result with the latest time. Patients' MRN pseudonyms are indexed too, so a hospital
can ask by institution + MRN.

A build is a publication through the sink (``hub.lakehouse.sink``): every row is
leak-scanned before it is written (a finding rolls the whole build back), and a build that
wrote rows appends one signed manifest with the row count and digest per index table, and
the digest of the index's whole content (``DIGESTED``) before and after the build, taken in
the build's transaction: `hub audit verify` recomputes it. Anything else that writes these
tables must do the same, or verify reports the change as tampering.
"""

from __future__ import annotations

import datetime as dt
import json

import sqlalchemy as sa
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.expressions import AlwaysTrue, GreaterThan

from deid.keys import Keyring
from hub.lakehouse.sink import Publication
from hub.lakehouse.tables import open_catalog
from hub.lineage.manifests import sql_state
from hub.lineage.runrecord import create_all_concurrently
from hub.region import Region

LOINC = "http://loinc.org"

metadata = sa.MetaData()
results = sa.Table(
    "recognition_results", metadata,
    sa.Column("patient", sa.String(64), primary_key=True),
    sa.Column("resource_type", sa.String(32), primary_key=True),  # Observation | DiagnosticReport
    sa.Column("loinc", sa.String(32), primary_key=True),
    sa.Column("institution", sa.String(64), primary_key=True),
    sa.Column("observation_id", sa.String(64), nullable=False, index=True),  # decisions check the id exists
    sa.Column("effective_time", sa.DateTime(timezone=True)),
    sa.Column("status", sa.String(24), nullable=False),
    sa.Column("resource", sa.Text, nullable=False),
)
patient_ids = sa.Table(
    "recognition_patient_ids", metadata,
    sa.Column("identifier", sa.String(64), primary_key=True),  # MRN pseudonym (institution-scoped)
    sa.Column("patient", sa.String(64), nullable=False),  # linkage pseudonym
)
builds = sa.Table(
    "recognition_builds", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("built_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("up_to", sa.DateTime(timezone=True), nullable=False),  # published_at of the newest row read
    sa.Column("rows_read", sa.Integer, nullable=False),
)
#: Written only by builds, so their whole content is recorded in each build's manifest (decisions are not:
#: hospitals add them through the API at any time).
DIGESTED = (results, patient_ids, builds)
#: What the index was last built under: the master key id (re-keyed rows leave the lakehouse,
#: so a new key means a full rebuild). Not digested: a tampered value only forces a rebuild.
state = sa.Table(
    "recognition_state", metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("value", sa.String(200), nullable=False),
)
decisions = sa.Table(
    "recognition_decisions", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("institution", sa.String(64), nullable=False),
    sa.Column("observation_id", sa.String(64), nullable=False),
    sa.Column("decision", sa.String(16), nullable=False),  # accept | retest
    sa.Column("reason", sa.String(64)),
)


def index_url(region: Region) -> str:
    """region.yaml's `recognition_index` URL (e.g. PostgreSQL in production), else SQLite in the workspace."""
    return region.recognition_index or f"sqlite:///{(region.workspace / 'recognition.db').resolve()}"


#: The state row every build updates first: its row lock (SQLite: the database's write lock) makes
#: concurrent builds (several workers, a backfill's runs) take turns instead of failing.
BUILD_LOCK = "build_lock"


def connect(url: str) -> sa.Engine:
    # SQLite: a build waiting for another build's write lock waits (up to 10 minutes) instead of failing
    engine = sa.create_engine(url, connect_args={"timeout": 600} if url.startswith("sqlite") else {})
    create_all_concurrently(metadata, engine)
    for index in results.indexes:  # also on an index database made before the index existed
        index.create(engine, checkfirst=True)
    with engine.begin() as conn:
        _insert_if_missing(conn, state, {"name": BUILD_LOCK, "value": "-"})
    return engine


def _insert_if_missing(conn: sa.Connection, table: sa.Table, row: dict) -> None:
    """INSERT that does nothing when the primary key exists, also when another process inserts it at the same time."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
        conn.execute(insert(table).values(**row).on_conflict_do_nothing())
    elif dialect == "sqlite":
        conn.execute(table.insert().prefix_with("OR IGNORE").values(**row))
    elif dialect in ("mysql", "mariadb"):
        conn.execute(table.insert().prefix_with("IGNORE").values(**row))
    else:
        try:
            with conn.begin_nested():
                conn.execute(table.insert().values(**row))
        except sa.exc.IntegrityError:
            pass


def _take_build_lock(conn: sa.Connection) -> None:
    """Held until the build's transaction ends; a second build waits here, then reads what the first wrote."""
    conn.execute(state.update().where(state.c.name == BUILD_LOCK).values(value=dt.datetime.now(dt.UTC).isoformat()))


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def build(region: Region, engine: sa.Engine, keys: Keyring | None = None) -> int:
    """Add rows published since the last build; returns rows read.

    The build's manifest is signed with the region's signing key; keys, if given, names the
    master key in it. Raises LeakBlocked (nothing written, no manifest) if a row carries an
    identifier. Rows only ever leave the lakehouse by re-keying (`hub keys repseudonymize`)
    or as deletions a full pull found at the source; after either, the index is rebuilt from
    scratch in the same transaction, so no reader sees a person twice or a deleted result.
    """
    icat = open_catalog(region.catalog_url, region.warehouse)
    try:
        pat = icat.load_table(f"{region.zone}.patient")
        sources = [(t, icat.load_table(f"{region.zone}.{t.lower()}")) for t in ("Observation", "DiagnosticReport")]
    except NoSuchTableError:
        return 0
    read = 0
    with Publication.open(region, keys, "recognition-index") as pub:
        with engine.begin() as conn:  # a LeakBlocked below rolls the whole build back
            _take_build_lock(conn)
            for table in (pat, *(t for _, t in sources)):  # what the build before this one published, too
                table.refresh()
            since = _utc(conn.execute(sa.select(sa.func.max(builds.c.up_to))).scalar())
            built_key = conn.execute(sa.select(state.c.value).where(state.c.name == "key_id")).scalar()
            rebuild = since is not None and ((keys is not None and built_key not in (None, keys.key_id))
                                             or _deleted_since(region, since))
            if rebuild:
                since = None
            flt = GreaterThan("published_at", since.isoformat()) if since else AlwaysTrue()
            newest = since
            before = sql_state(conn, DIGESTED)
            if rebuild:
                for t in DIGESTED:
                    conn.execute(t.delete())
            if keys is not None:
                conn.execute(state.delete().where(state.c.name == "key_id"))
                conn.execute(state.insert().values(name="key_id", value=keys.key_id))
            for batch in pat.scan(row_filter=flt, selected_fields=("patient", "resource", "published_at")).to_arrow_batch_reader():
                rows = []
                for r in batch.to_pylist():
                    for ident in json.loads(r["resource"]).get("identifier", []):
                        if ident.get("system") == "urn:hub:pseudonym:identifier":
                            rows.append({"identifier": ident["value"], "patient": r["patient"]})
                pub.record_rows(patient_ids.name, rows)
                _upsert_ids(conn, rows)
            for rtype, table in sources:
                for batch in table.scan(row_filter=flt, selected_fields=("patient", "code", "institution", "id", "effective_time", "resource", "published_at")).to_arrow_batch_reader():
                    best: dict[tuple, dict] = {}
                    for r in batch.to_pylist():
                        read += 1
                        newest = max(filter(None, [newest, _utc(r["published_at"])]))
                        if not r["patient"] or not (r["code"] or "").startswith(f"{LOINC}|"):
                            continue
                        key = (r["patient"], rtype, r["code"].split("|", 1)[1], r["institution"])
                        if key not in best or (r["effective_time"] or _MIN) > (best[key]["effective_time"] or _MIN):
                            best[key] = {"patient": key[0], "resource_type": rtype, "loinc": key[2], "institution": key[3],
                                         "observation_id": r["id"], "effective_time": r["effective_time"],
                                         "status": json.loads(r["resource"]).get("status", ""), "resource": r["resource"]}
                    pub.record_rows(results.name, list(best.values()), json_columns=("resource",), token_columns=(),
                                    code_columns={"loinc": LOINC})
                    _upsert_results(conn, list(best.values()))
            if newest is not None and read:
                conn.execute(builds.insert().values(built_at=dt.datetime.now(dt.UTC), up_to=newest, rows_read=read))
            after = sql_state(conn, DIGESTED)
            if after != before:
                pub.record_store_state("recognition-index", before, after)
        pub.commit()
        pub.finish({"index": engine.url.render_as_string(hide_password=True), "zone": region.zone, "rows_read": read,
                    "up_to": newest.isoformat() if newest else None})
    return read


_MIN = dt.datetime.min.replace(tzinfo=dt.UTC)


def _deleted_since(region: Region, since: dt.datetime) -> bool:
    """True when a full pull removed rows deleted at the source after the last build."""
    from hub.lineage import runrecord
    from hub.lineage.schema import deletions

    with runrecord.connect(region.catalog_url).connect() as conn:
        latest = conn.execute(sa.select(sa.func.max(deletions.c.detected_at))).scalar()
    return latest is not None and _utc(latest) > since


def _upsert_ids(conn, rows: list[dict]) -> None:
    if rows:
        conn.execute(patient_ids.delete().where(patient_ids.c.identifier.in_([r["identifier"] for r in rows])))
        conn.execute(patient_ids.insert(), rows)


def _upsert_results(conn, rows: list[dict]) -> None:
    """Keep, per key, the later of the stored and the new result."""
    if not rows:
        return
    for i in range(0, len(rows), 500):
        chunk = rows[i : i + 500]
        cols = (results.c.patient, results.c.resource_type, results.c.loinc, results.c.institution)
        keys = sa.tuple_(*cols)

        def key(r: dict) -> tuple:
            return (r["patient"], r["resource_type"], r["loinc"], r["institution"])

        stored = {(r.patient, r.resource_type, r.loinc, r.institution): _utc(r.effective_time) for r in conn.execute(
            sa.select(*cols, results.c.effective_time).where(keys.in_([key(r) for r in chunk])))}
        newer = [r for r in chunk if key(r) not in stored or stored[key(r)] is None
                 or (r["effective_time"] and r["effective_time"] >= stored[key(r)])]
        if newer:
            conn.execute(results.delete().where(keys.in_([key(r) for r in newer])))
            conn.execute(results.insert(), newer)
