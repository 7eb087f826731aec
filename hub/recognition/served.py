"""What the recognition API serves by id, and to whom: read grants and resource lookups.

A search shows an institution the results of a person whose identifier it knows. A ``read``
(``GET /fhir/<type>/<id>``) carries no identifier, so it is scoped by a **grant**: each
search an institution makes leaves a grant for the person it looked up (for every search,
known person or not, so a miss does the same database work), valid for ``read_hours``
(region.yaml ``recognition_limits``, default 24). Observation, DiagnosticReport and Patient
are served by id only for persons the caller holds a grant for; anything else is answered
404, the same as an id that does not exist. Organizations (the region's institutions) are
served to every valid token.

Grants are keyed by an HMAC of (institution, patient pseudonym) under the master key: the
table does not say who looked up whom to someone without the key. Results are read from the
recognition index first (what searches serve), then from the zone's lakehouse table (earlier
results a DiagnosticReport refers to); Patients and Organizations from the zone's tables.
Served Patients keep what the zone publishes except the hub's own pseudonym identifiers,
which no caller needs.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass

import sqlalchemy as sa
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.expressions import EqualTo

from deid.keys import Keyring
from hub.lakehouse.tables import open_catalog
from hub.recognition.query import indexed_result
from hub.region import Region

log = logging.getLogger("hub.recognition")
metadata = sa.MetaData()
grants = sa.Table(
    "recognition_read_grants", metadata,
    sa.Column("grant", sa.String(64), primary_key=True),  # HMAC of institution|patient pseudonym, never either
    sa.Column("until", sa.Float, nullable=False),  # epoch seconds
)
PSEUDONYM_SYSTEMS = "urn:hub:pseudonym:"
READABLE = ("Observation", "DiagnosticReport", "Patient", "Organization")


@dataclass(frozen=True)
class Found:
    """One served resource and what scopes it (patient None: not a person's data)."""

    resource_type: str
    resource: dict
    patient: str | None
    institution: str
    loinc: str | None = None
    status: str = ""
    when: dt.datetime | None = None


class Served:
    """Grants in the index database, and lookups by id in the index and the zone's tables."""

    def __init__(self, region: Region, keys: Keyring, index: sa.Engine):
        self.region, self.keys, self.index = region, keys, index
        metadata.create_all(index)
        self._lake = None
        self._purged = 0.0

    def _key(self, institution: str, patient: str) -> str:
        # the identifier key, domain-separated by a prefix no identifier system has (deid.keys has a fixed purpose list)
        return self.keys.hmac_hex("identifier", f"urn:hub:recognition-read-grant|{institution}|{patient}")

    def grant(self, institution: str, patient: str, now: float, seconds: float, slack: float = 600.0) -> None:
        """Let ``institution`` read ``patient``'s served resources for ``seconds`` from ``now``.

        A grant that already runs to within ``slack`` seconds of that is left as it is (pages
        of one search, a clinic asking twice): one read instead of a commit. Whether the
        person is known plays no part, so a miss costs the same as a hit. Expired grants are
        removed at most once an hour.
        """
        until = now + seconds
        key = self._key(institution, patient)
        with self.index.connect() as conn:
            current = conn.execute(sa.select(grants.c.until).where(grants.c.grant == key)).scalar()
        if current is not None and current >= until - slack:
            return
        for _ in range(3):
            try:
                with self.index.begin() as conn:
                    if conn.execute(grants.update().where(grants.c.grant == key).values(until=until)).rowcount == 0:
                        conn.execute(grants.insert().values(grant=key, until=until))
                    if now - self._purged >= 3600:
                        conn.execute(grants.delete().where(grants.c.until < now))
                        self._purged = now
                return
            except sa.exc.IntegrityError:  # another worker inserted the same grant meanwhile: update it
                continue
            except sa.exc.OperationalError as exc:  # a busy database: the answer stands, reads wait for the next search
                log.warning("recognition: could not write a read grant (%s)", type(exc).__name__)
                return

    def granted(self, institution: str, patient: str | None, now: float) -> bool:
        if not patient:
            return False
        with self.index.connect() as conn:
            until = conn.execute(sa.select(grants.c.until).where(grants.c.grant == self._key(institution, patient))).scalar()
        return until is not None and until > now

    def _table(self, resource_type: str):
        if self._lake is None:
            self._lake = open_catalog(self.region.catalog_url, self.region.warehouse)
        try:
            return self._lake.load_table(f"{self.region.zone}.{resource_type.lower()}")
        except NoSuchTableError:
            return None

    def _lakehouse(self, resource_type: str, rid: str) -> Found | None:
        table = self._table(resource_type)
        if table is None:
            return None
        rows = table.scan(row_filter=EqualTo("id", rid), selected_fields=(
            "id", "patient", "institution", "code", "effective_time", "resource")).to_arrow().to_pylist()
        if not rows:
            return None
        r = rows[0]
        resource = json.loads(r["resource"])
        code = r["code"] or ""
        return Found(resource_type, resource, r["patient"], r["institution"],
                     code.split("|", 1)[1] if code.startswith("http://loinc.org|") else None,
                     resource.get("status", ""), r["effective_time"])

    def find(self, resource_type: str, rid: str) -> Found | None:
        """The resource of this type and id the API may serve, or None."""
        if resource_type not in READABLE:
            return None
        if resource_type in ("Observation", "DiagnosticReport"):
            row = indexed_result(self.index, resource_type, rid)
            if row is not None:
                when = row.effective_time if row.effective_time is None or row.effective_time.tzinfo else row.effective_time.replace(tzinfo=dt.UTC)
                return Found(resource_type, json.loads(row.resource), row.patient, row.institution, row.loinc, row.status, when)
        found = self._lakehouse(resource_type, rid)
        if found is not None and resource_type == "Patient":
            resource = dict(found.resource)
            kept = [i for i in resource.get("identifier", []) if not str(i.get("system", "")).startswith(PSEUDONYM_SYSTEMS)]
            if kept:
                resource["identifier"] = kept
            else:
                resource.pop("identifier", None)
            found = Found("Patient", resource, found.patient, found.institution)
        return found
