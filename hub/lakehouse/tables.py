"""Table layout: one Iceberg table per zone and resource type, partitioned by institution.

Each row holds the lossless resource JSON, typed key columns for the common queries, and
lineage columns naming where the row came from and under which mapping, rules and key.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import (
    NamespaceAlreadyExistsError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.table.sorting import SortField, SortOrder
from pyiceberg.transforms import IdentityTransform
from pyiceberg.types import NestedField, StringType, TimestamptzType
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from hub.errors import CommandFailed

_FIELDS = [
    ("id", StringType(), True, "resource id (keyed pseudonym of institution + source key)"),
    ("institution", StringType(), True, "issuing institution id"),
    ("resource_type", StringType(), True, "FHIR resource type"),
    ("patient", StringType(), False, "patient pseudonym (cross-institution linkage key)"),
    ("code", StringType(), False, "primary code as system|code (LOINC, ICD-10 ...)"),
    ("effective_time", TimestamptzType(), False, "clinically relevant time of the resource"),
    ("resource", StringType(), True, "de-identified FHIR R4 resource, JSON, decimals exact"),
    ("content_hash", StringType(), True, "SHA-256 of the resource JSON"),
    ("source_system", StringType(), True, "HIS or LIS"),
    ("source_table", StringType(), True, "source table the row came from"),
    ("source_key_hash", StringType(), True, "keyed hash of the source row key"),
    ("run_id", StringType(), True, "run that published this version"),
    ("mapping_version", StringType(), True, "mapping name@version+hash"),
    ("ruleset_version", StringType(), True, "de-identification ruleset name@version+hash"),
    ("key_id", StringType(), True, "fingerprint of the key the pseudonyms were made with"),
    ("published_at", TimestamptzType(), True, "when this version was published"),
    ("source_updated_at", TimestamptzType(), False, "the source's update time of this version (orders versions)"),
    ("source_row_hash", StringType(), False,
     "keyed hash of the source row with the mapping, rules and key that made this version: an unchanged row is not mapped again"),
]

SCHEMA = Schema(*[
    NestedField(i + 1, name, typ, required=req, doc=doc) for i, (name, typ, req, doc) in enumerate(_FIELDS)
])
PARTITION_SPEC = PartitionSpec(
    PartitionField(source_id=2, field_id=1000, transform=IdentityTransform(), name="institution")
)
ARROW_SCHEMA = pa.schema([
    pa.field(name, pa.timestamp("us", tz="UTC") if isinstance(typ, TimestamptzType) else pa.string(), nullable=not req)
    for name, typ, req, _ in _FIELDS
])
TABLE_PROPERTIES = {"write.parquet.compression-codec": "zstd", "format-version": "2"}


class WarehouseMismatch(CommandFailed):
    """The catalog's tables live in another warehouse than this workspace's (a copied workspace)."""


def open_catalog(catalog_url: str, warehouse: Path) -> Catalog:
    """The SQL catalog (SQLite file by default, PostgreSQL in production).

    Iceberg metadata records absolute file locations. A workspace copied with ``cp -r``
    keeps a catalog whose tables point into the original's warehouse, so publishing into the
    copy would write into the original: that is refused here, before anything is read.
    """
    warehouse.mkdir(parents=True, exist_ok=True)
    uri = warehouse.resolve().as_uri()
    for attempt in range(5):  # a new catalog database opened by several processes at once
        try:
            catalog = SqlCatalog("hub", uri=catalog_url, warehouse=uri)
            break
        except (OperationalError, ProgrammingError, IntegrityError):
            if attempt == 4:
                raise
            time.sleep(0.05 * (attempt + 1))
    _check_warehouse(catalog, uri)
    return catalog


def _check_warehouse(catalog: SqlCatalog, uri: str) -> None:
    import sqlalchemy as sa

    try:
        with catalog.engine.connect() as conn:
            location = conn.execute(sa.text("SELECT metadata_location FROM iceberg_tables WHERE catalog_name = 'hub' LIMIT 1")).scalar()
    except sa.exc.SQLAlchemyError:
        return  # no table yet
    if location and not location.startswith(uri.rstrip("/") + "/"):
        raise WarehouseMismatch(
            f"this catalog's tables live in another warehouse ({location.split('/metadata/')[0].rsplit('/', 2)[0]}), "
            f"not in {uri}: the workspace was probably copied. Publish into the original workspace, or start the copy "
            "afresh (remove its catalog.db and warehouse/) and publish it again", 2)


def table_name(zone: str, resource_type: str) -> str:
    return f"{zone}.{resource_type.lower()}"


SORT_ORDER = SortOrder(
    SortField(source_id=4, transform=IdentityTransform()),  # patient: lookups by pseudonym prune row groups
    SortField(source_id=6, transform=IdentityTransform()),  # effective_time: time-range pulls within a patient
)


def ensure_table(catalog: Catalog, zone: str, resource_type: str) -> Table:
    """Load the zone's table for a resource type, creating it if needed and evolving its schema.

    A column added to SCHEMA (a new key column) is added to existing tables by a metadata
    change only: data files are not rewritten, and older files read it as null.
    """
    try:
        catalog.create_namespace(zone)
    except (NamespaceAlreadyExistsError, IntegrityError):  # IntegrityError: another process created it meanwhile
        pass
    name = table_name(zone, resource_type)
    try:
        table = catalog.load_table(name)
    except NoSuchTableError:
        try:
            return catalog.create_table(name, schema=SCHEMA, partition_spec=PARTITION_SPEC, sort_order=SORT_ORDER, properties=TABLE_PROPERTIES)
        except TableAlreadyExistsError:  # another institution's run created it meanwhile
            table = catalog.load_table(name)
    missing = [f.name for f in SCHEMA.fields if f.name not in {c.name for c in table.schema().fields}]
    if missing:
        with table.update_schema() as update:
            update.union_by_name(SCHEMA)
        table = catalog.load_table(name)
    return table


_CODE_ELEMENT = {
    "MedicationRequest": "medicationCodeableConcept",
    "Specimen": "type",
    "Organization": "type",
}
_TIME_PATHS = {
    "Observation": (("effectiveDateTime",), ("issued",)),
    "DiagnosticReport": (("effectiveDateTime",), ("issued",)),
    "Encounter": (("period", "start"),),
    "Condition": (("recordedDate",), ("onsetDateTime",)),
    "MedicationRequest": (("authoredOn",),),
    "ServiceRequest": (("authoredOn",),),
    "Specimen": (("collection", "collectedDateTime"), ("receivedTime",)),
    "Patient": (("birthDate",),),  # lets a run tell a reused source key from the same person
}


def primary_code(resource: dict) -> str | None:
    """system|code of the resource's main code, preferring a standard system over a local one."""
    concept = resource.get(_CODE_ELEMENT.get(resource["resourceType"], "code"))
    if isinstance(concept, list):
        concept = concept[0] if concept else None
    codings = (concept or {}).get("coding") or []
    if not codings:
        return None
    best = next((c for c in codings if not c.get("system", "").startswith("urn:hub:")), codings[0])
    return f"{best.get('system', '')}|{best.get('code', '')}"


def effective_time(resource: dict, tz: dt.tzinfo) -> dt.datetime | None:
    """The resource's clinically relevant time; date-only values are midnight in tz."""
    for path in _TIME_PATHS.get(resource["resourceType"], ()):
        node = resource
        for step in path:
            node = node.get(step) if isinstance(node, dict) else None
        if isinstance(node, str):
            if len(node) in (4, 7):  # a year or year-month (partial FHIR dates, e.g. a generalised birth date)
                node += "-01" * ((10 - len(node)) // 3)
            parsed = parse_instant(node)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=tz)
    return None


_ZONES: dict[dt.tzinfo, dt.tzinfo] = {}
_MINUTE = dt.timedelta(minutes=1)


def parse_instant(text: str) -> dt.datetime:
    """datetime.fromisoformat(text) with one shared tzinfo per UTC offset of whole minutes (the offsets
    of real places: at most 2,879, however hostile the data). fromisoformat makes a new zone for each
    value, and pickle writes out each one: a worker's results cost twice as much to send."""
    when = dt.datetime.fromisoformat(text)
    tz = when.tzinfo
    if tz is None:
        return when
    shared = _ZONES.get(tz)  # fromisoformat's zones are unnamed fixed offsets: equal offsets, equal zones
    if shared is None:
        if tz.utcoffset(None) % _MINUTE:  # seconds or microseconds: no place's offset, not worth a slot
            return when
        shared = _ZONES.setdefault(tz, tz)
    if shared is tz:
        return when
    try:
        return when.astimezone(shared)  # same offset: same wall time (replace() costs 4x more)
    except OverflowError:  # at the ends of the calendar (year 1, year 9999) the trip through UTC overflows
        return when
