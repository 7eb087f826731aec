"""Research releases: the research zone, built from the recognition zone behind a risk gate.

A release pins one snapshot of every recognition-zone table when it starts and reads only
those snapshots, so a publish that commits meanwhile changes nothing in it. It applies the
ruleset's research actions (ids and pseudonyms re-keyed with research keys, dates shifted
per patient, birth dates to year with top-coding, identifiers and free text dropped),
measures k-anonymity per real person over the quasi-identifiers of every row it will
release (deid.risk says who is one person and what their tuple is), suppresses every row of
the people it must, and writes each research table in one atomic overwrite. It then reads
the written rows back at the new snapshots, recounts k, and fails (rolling the research
tables back) unless the recount equals the gate's figure; only then are the tables tagged
with the release name and the publication signed. The risk report, with the snapshot ids
read and written, is stored with the release whether it was published or refused.

Release names are unique among live releases (a database constraint, not only a check) and
a tag, once on a research table, is never moved or recreated.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.table import Table

from deid.actions import PSEUDONYM_SYSTEM, pseudonym
from deid.engine import Deidentifier
from deid.keys import Keyring
from deid.risk import (
    BIRTH_YEAR,
    DEFAULT_QUASI_IDENTIFIERS,
    INSTITUTION,
    SEX,
    PatientFacts,
    RiskGateFailed,
    RiskReport,
    band_year,
    canonical_qi,
    enforce_k,
    generalize_people,
    link_persons,
    measure,
    person_tuples,
)
from deid.ruleset import load_ruleset
from hub.errors import CommandFailed
from hub.fhir.jsonio import content_hash, dumps, loads
from hub.fhir.validate import RESOURCE_MODULES
from hub.lakehouse.sink import Publication
from hub.lakehouse.tables import (
    ARROW_SCHEMA,
    effective_time,
    ensure_table,
    open_catalog,
    primary_code,
    table_name,
)
from hub.lineage import access
from hub.lineage.manifests import release_entry
from hub.lineage.runrecord import connect as connect_catalog
from hub.lineage.schema import LIVE, NAME_INDEX, releases
from hub.lineage.signing import load_signer
from hub.region import Region

CST = dt.timezone(dt.timedelta(hours=8))
LINKAGE_SYSTEM = PSEUDONYM_SYSTEM + "patient-linkage"
CHUNK_ROWS = 50_000



class ReleaseError(CommandFailed):
    """A release that cannot be made as asked (name taken, tag exists, mixed keys, failed recount)."""


@dataclass
class Release:
    release_id: str
    name: str
    status: str
    report: RiskReport
    rows: dict[str, int]
    snapshots: dict[str, int]


def quasi_identifier_names(names: Iterable[str] | None) -> list[str]:
    """The quasi-identifiers of a release, validated: birth_year, sex, institution, or a Patient element.

    Institution is always one: every research row carries its institution, and the
    Organization table and references name it, so an attacker always sees it.
    """
    from fhir.resources.R4B.patient import Patient

    out: list[str] = []
    for raw in names or DEFAULT_QUASI_IDENTIFIERS:
        name = canonical_qi(raw.strip())
        if name in (BIRTH_YEAR, SEX, INSTITUTION):
            pass
        elif name in ("id", "identifier", "name", "telecom", "address", "resourceType") or name not in Patient.model_fields:
            raise ReleaseError(f"quasi-identifier {raw!r} is not one the gate knows: use birth_year, sex, institution or a top-level "
                               f"Patient element the research zone releases (e.g. maritalStatus, deceasedBoolean)")
        if name not in out:
            out.append(name)
    if INSTITUTION not in out:
        raise ReleaseError(f"quasi-identifiers {', '.join(out)} leave out institution, which every research row releases: add institution")
    return out


def build_release(region: Region, keys: Keyring, *, name: str | None = None, k: int = 5, max_suppression: float = 0.05,
                  purpose: str = "research release", quasi_identifiers: Iterable[str] | None = None) -> Release:
    """Build, gate and (if it passes) publish a research release from the recognition zone.

    Returns the release, published or refused by the risk gate. Raises ReleaseError when the
    name is taken (by a live release or an existing tag), when the input rows carry a key id
    other than keys' (run `hub keys repseudonymize`), or when the recount of the written rows
    differs from the gate's figure (the research tables are rolled back). The read of the
    recognition zone is written to the access log with its purpose.
    """
    names = quasi_identifier_names(quasi_identifiers)
    release_id = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-research-{secrets.token_hex(3)}"
    name = name or release_id
    ruleset = load_ruleset(region.ruleset, "research")
    deid = Deidentifier(ruleset, keys)
    icat = open_catalog(region.catalog_url, region.warehouse)
    engine = connect_catalog(region.catalog_url)
    load_signer(region)  # before anything is written: a release without its manifest is a break
    _reserve_name(icat, engine, release_id, name, k, ruleset.label, keys.key_id)
    status, report = "failed", RiskReport(k_required=k, quasi_identifiers=names, people=0, max_suppression=max_suppression)
    try:
        pinned = pin_snapshots(icat, region.zone)
        inputs = gate_inputs(pinned, deid, names)
        if inputs.key_ids != {keys.key_id} and inputs.key_ids:
            report.snapshots_read, report.key_ids = {t: s for t, (_, s) in pinned.items()}, sorted(inputs.key_ids)
            report.reason = _key_refusal(inputs.key_ids, keys.key_id)
            status = "refused"
            raise ReleaseError(f"release {name!r} refused: {report.reason}", 1)
        person_of, unlinkable = link_persons(inputs.facts)
        people = person_tuples(person_of, inputs.observed, names)
        records = defaultdict(int)
        for key, person in person_of.items():
            records[person] += inputs.records.get(key, 0)
        try:
            band, suppressed, report = enforce_k(people, k, names, max_suppression, records=records)
        except RiskGateFailed as exc:
            report, status = exc.report, "refused"
            _describe_input(report, pinned, inputs, person_of, unlinkable)
            access.record(engine, "research-release", purpose, {"release": name, "read": f"{region.zone}.*", "people": len(people),
                                                                 "snapshots": report.snapshots_read}, "refused")
            return Release(release_id, name, "refused", report, {}, {})
        _describe_input(report, pinned, inputs, person_of, unlinkable)
        dropped = unlinkable | {key for key, person in person_of.items() if person in suppressed}
        research_person = {pseudonym(keys, "research-linkage", key): person for key, person in person_of.items() if key not in dropped}

        with Publication.open(region, keys, "research-release", release_id, engine=engine) as pub:
            rows, written, previous = write_research_tables(pub, icat, (
                (rtype, _research_rows(pinned.get(rtype), rtype, deid, keys, dropped, band, ruleset.label, release_id))
                for rtype in RESOURCE_MODULES))
            report.snapshots_written = written
            report.k_written, problem = recount(icat, written, research_person, names, k)
            if problem is None and report.k_written != report.k_achieved:
                problem = f"the written rows give k={report.k_written}, the gate measured k={report.k_achieved}"
            summary = {"release": name, "k": k, "ruleset": ruleset.label, "rows": rows, "read": report.snapshots_read}
            if problem is not None:
                _roll_back(icat, previous, release_id)
                pub.finish({**summary, "rolled_back": problem})  # the chain still accounts for every snapshot made
                report.passed, report.reason = False, f"recount of the written rows failed: {problem}; research tables rolled back"
                raise ReleaseError(f"release {name!r} failed: {report.reason}", 1)
            _tag(icat, written, name)
            # logged before the manifest, which then anchors the entry (hub.lineage.access)
            access.record(engine, "research-release", purpose, {"release": name, "read": f"{region.zone}.*", "rows": rows,
                                                                 "snapshots": report.snapshots_read})
            # the hub_releases row as _finish will write it: verify compares the live row with this
            pub.finish({**summary, "release_record": release_entry(release_id, name, k, "published", ruleset.label,
                                                                   keys.key_id, report.as_dict(), written)})
        status = "published"
        return Release(release_id, name, "published", report, rows, written)
    finally:
        _finish(engine, release_id, status, report)


# ---- the pinned input ---------------------------------------------------------------------------

def pin_snapshots(icat, zone: str) -> dict[str, tuple[Table, int]]:
    """{resource type: (table, its current snapshot id)} of every recognition table with data, read once."""
    pinned = {}
    for rtype in RESOURCE_MODULES:
        try:
            table = icat.load_table(table_name(zone, rtype))
        except NoSuchTableError:
            continue
        snap = table.current_snapshot()
        if snap is not None:
            pinned[rtype] = (table, snap.snapshot_id)
    return pinned


@dataclass
class GateInputs:
    facts: dict[str, PatientFacts]  # recognition patient key -> what links it to a person
    observed: dict[str, dict[str, set]]  # patient key -> quasi-identifier -> values on its released rows
    records: dict[str, int]  # patient key -> rows released for it, over every table
    key_ids: set[str]
    patient_rows_without_key: int = 0


def gate_inputs(pinned: dict[str, tuple[Table, int]], deid: Deidentifier, names: list[str]) -> GateInputs:
    """Everything the gate measures, read at the pinned snapshots: Patient records in full, other tables by column."""
    facts: dict[str, PatientFacts] = defaultdict(PatientFacts)
    observed: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    records: dict[str, int] = defaultdict(int)
    key_ids: set[str] = set()
    without_key = 0
    patient_elements = [n for n in names if n not in (INSTITUTION,)]
    for rtype, (table, snap) in pinned.items():
        for batch in table.scan(snapshot_id=snap, selected_fields=("patient", "institution", "key_id")).to_arrow_batch_reader():
            key_ids.update(pc.unique(batch.column("key_id")).to_pylist())
            grouped = pa.Table.from_batches([batch]).filter(pc.is_valid(batch.column("patient"))) \
                .group_by(["patient", "institution"]).aggregate([([], "count_all")])
            for key, inst, n in zip(*(grouped.column(c).to_pylist() for c in ("patient", "institution", "count_all")), strict=True):
                records[key] += n
                observed[key][INSTITUTION].add(inst)
        if rtype != "Patient":
            continue
        for batch in table.scan(snapshot_id=snap, selected_fields=("patient", "resource")).to_arrow_batch_reader():
            for key, text in zip(batch.column("patient").to_pylist(), batch.column("resource").to_pylist(), strict=True):
                if key is None:
                    without_key += 1  # a Patient no key identifies: never released (see _research_rows)
                    continue
                resource = loads(text)
                f = facts[key]
                f.patient_rows += 1
                f.linked |= any(i.get("system") == LINKAGE_SYSTEM and i.get("value") == key for i in resource.get("identifier", []))
                f.match.add((resource.get("birthDate"), resource.get("gender")))
                out = deid.apply(resource, patient=key)
                for n in patient_elements:
                    observed[key][n].add(_released_value(out, n))
    for key in records:
        facts.setdefault(key, PatientFacts())  # rows without any Patient record: unlinkable
    return GateInputs(dict(facts), observed, dict(records), key_ids, without_key)


def _released_value(resource: dict, name: str) -> str | None:
    if name == BIRTH_YEAR:
        return resource.get("birthDate")
    if name == SEX:
        return resource.get("gender")
    value = resource.get(name)
    return None if value is None else json.dumps(value, sort_keys=True, ensure_ascii=False)


def _key_refusal(found: set[str], current: str) -> str:
    others = sorted(found - {current})
    if current in found:
        return (f"the recognition zone mixes rows made with key ids {', '.join(sorted(found))}: a release would count people "
                f"twice; run `hub keys repseudonymize` first")
    return (f"the recognition zone's rows carry key id {', '.join(others)}, not the current master key's {current}: run "
            f"`hub keys repseudonymize` (after `hub keys rotate`), or configure the key the data was published with")


def _describe_input(report: RiskReport, pinned, inputs: GateInputs, person_of: dict, unlinkable: set) -> None:
    report.snapshots_read = {t: s for t, (_, s) in pinned.items()}
    report.key_ids = sorted(inputs.key_ids)
    linked = sum(1 for key in person_of if inputs.facts[key].linked)
    report.linkage = {
        "patient_keys": len(inputs.facts), "by_resident_id": linked, "without_resident_id": len(person_of) - linked,
        "persons": len(set(person_of.values())), "unlinkable_keys_left_out": len(unlinkable),
        "records_left_out_unlinkable": sum(inputs.records.get(key, 0) for key in unlinkable),
        "patient_rows_without_key_left_out": inputs.patient_rows_without_key,
    }


# ---- writing ---------------------------------------------------------------------------------------

def _research_rows(source: tuple[Table, int] | None, rtype: str, deid: Deidentifier, keys: Keyring, dropped: set[str],
                   band: int, ruleset_label: str, release_id: str) -> Iterator[pa.Table]:
    """The research rows of one resource type, in chunks, read at the pinned snapshot, without dropped people."""
    if source is None:
        return
    table, snap = source
    now = dt.datetime.now(dt.UTC)
    drop = sorted(dropped)
    cols = ("resource", "patient", "institution", "source_system", "source_table", "source_key_hash", "mapping_version")
    chunk: list[dict] = []
    for batch in table.scan(snapshot_id=snap, selected_fields=cols).to_arrow_batch_reader():
        patient = batch.column("patient")
        keep = pc.invert(pc.fill_null(pc.is_in(patient, value_set=pa.array(drop, patient.type)), False))
        if rtype == "Patient":
            keep = pc.and_(keep, pc.is_valid(patient))
        for row in pa.Table.from_batches([batch]).filter(keep).to_pylist():
            out = deid.apply(loads(row["resource"]), patient=row["patient"])
            if rtype == "Patient" and "birthDate" in out:
                out["birthDate"] = band_year(out["birthDate"], band)
            text = dumps(out)
            chunk.append({
                "id": out["id"], "institution": row["institution"], "resource_type": rtype,
                "patient": pseudonym(keys, "research-linkage", row["patient"]) if row["patient"] else None,
                "code": primary_code(out), "effective_time": effective_time(out, CST), "resource": text,
                "content_hash": content_hash(text), "source_system": row["source_system"], "source_table": row["source_table"],
                "source_key_hash": pseudonym(keys, "research-id", row["source_key_hash"]), "run_id": release_id,
                "mapping_version": row["mapping_version"], "ruleset_version": ruleset_label, "key_id": keys.key_id,
                "published_at": now,
            })
            if len(chunk) >= CHUNK_ROWS:
                yield pa.Table.from_pylist(chunk, schema=ARROW_SCHEMA)
                chunk = []
    if chunk:
        yield pa.Table.from_pylist(chunk, schema=ARROW_SCHEMA)


def write_research_tables(pub: Publication, icat, tables: Iterable[tuple[str, Iterable[pa.Table]]]) -> tuple[dict[str, int], dict[str, int], dict[str, int | None]]:
    """The one place research rows are written: through the sink, each table replaced in one atomic commit.

    Every chunk is leak-scanned by the publication before it is staged; a finding raises
    LeakBlocked with nothing committed. Returns (rows written, new snapshot id, snapshot id
    before the release) per resource type. Tags come later, after the recount.
    """
    replacements, previous = {}, {}
    for rtype, chunks in tables:
        target = ensure_table(icat, "research", rtype)
        before = target.current_snapshot()
        previous[rtype] = before.snapshot_id if before else None
        replacement = replacements[rtype] = pub.replace_table(target)
        for data in chunks:
            replacement.append(data)
    try:
        pub.commit()
    except BaseException:
        _roll_back(icat, previous, pub.id)  # tables already replaced go back: a release is all or nothing
        raise
    written = {rtype: r.snapshot_id for rtype, r in replacements.items() if r.snapshot_id is not None}
    return {rtype: r.rows for rtype, r in replacements.items()}, written, previous


def recount(icat, written: dict[str, int], research_person: dict[str, str], names: list[str], k: int) -> tuple[int, str | None]:
    """k over the rows as written (read back at the new snapshots), people linked as the gate linked them.

    Returns (k, problem): problem says why the written rows cannot be what the gate
    measured (a patient pseudonym the gate never saw), else None.
    """
    observed: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    elements = [n for n in names if n != INSTITUTION]
    for rtype, snap in written.items():
        table = icat.load_table(table_name("research", rtype))
        fields = ("patient", "institution", "resource") if rtype == "Patient" else ("patient", "institution")
        for batch in table.scan(snapshot_id=snap, selected_fields=fields).to_arrow_batch_reader():
            if rtype != "Patient":
                batch = pa.Table.from_batches([batch]).group_by(["patient", "institution"]).aggregate([])
            cols = [batch.column(c).to_pylist() for c in fields]
            for values in zip(*cols, strict=True):
                key, inst = values[0], values[1]
                if key is None:
                    if rtype == "Patient":
                        return 0, "a Patient row without a patient pseudonym was written"
                    continue
                observed[key][INSTITUTION].add(inst)
                if rtype == "Patient":
                    out = loads(values[2])
                    for n in elements:
                        observed[key][n].add(_released_value(out, n))
    unknown = set(observed) - set(research_person)
    if unknown:
        return 0, f"{len(unknown)} written patient pseudonyms belong to nobody the gate counted"
    people = person_tuples({key: research_person[key] for key in observed}, observed, names)
    return measure(generalize_people(people, 1, names), k)[0] if people else 0, None


def _roll_back(icat, previous: dict[str, int | None], release_id: str) -> None:
    """Put each research table back as it was before the release (an emptied table if it had no snapshot)."""
    for rtype, snap in previous.items():
        table = icat.load_table(table_name("research", rtype))
        if snap is not None:
            table.manage_snapshots().set_current_snapshot(snap).commit()
        elif table.current_snapshot() is not None:
            table.delete(AlwaysTrue(), snapshot_properties={"hub.run-id": release_id, "hub.rolled-back": "true"})


def _tag(icat, written: dict[str, int], name: str) -> None:
    for rtype, snap in written.items():
        table = icat.load_table(table_name("research", rtype))
        if table.metadata.refs.get(name) is not None:
            raise ReleaseError(f"tag {name!r} appeared on research.{rtype.lower()} during the release; tags are never moved")
        table.manage_snapshots().create_tag(snap, name).commit()


# ---- the release record -----------------------------------------------------------------------------

def _reserve_name(icat, engine: sa.Engine, release_id: str, name: str, k: int, ruleset: str, key_id: str) -> None:
    """Claim name for this release (status building), or raise ReleaseError saying who has it."""
    NAME_INDEX.create(engine, checkfirst=True)  # catalogs made before the constraint existed
    try:
        research = icat.list_tables("research")
    except Exception:  # no research namespace yet
        research = []
    for ident in research:
        if icat.load_table(ident).metadata.refs.get(name) is not None:
            raise ReleaseError(f"release name {name!r} is taken: {'.'.join(ident)} already has a tag {name!r}, and tags are never moved; choose another name")
    with engine.begin() as conn:
        holder = conn.execute(sa.select(releases.c.release_id, releases.c.status)
                              .where(releases.c.name == name, releases.c.status.in_(LIVE))).first()
        if holder is not None:
            raise ReleaseError(f"release name {name!r} is taken by release {holder.release_id} ({holder.status}); release names are unique, choose another")
        try:
            conn.execute(releases.insert().values(
                release_id=release_id, name=name, created_at=dt.datetime.now(dt.UTC), status="building", k=k,
                ruleset=ruleset, key_id=key_id, risk_report="{}", snapshots="{}",
            ))
        except sa.exc.IntegrityError as exc:
            raise ReleaseError(f"release name {name!r} was taken by another release just now; release names are unique, choose another") from exc


def _finish(engine: sa.Engine, release_id: str, status: str, report: RiskReport) -> None:
    with engine.begin() as conn:
        conn.execute(releases.update().where(releases.c.release_id == release_id).values(
            status=status, risk_report=json.dumps(report.as_dict(), ensure_ascii=False),
            snapshots=json.dumps(report.snapshots_written if status == "published" else {}),
        ))
