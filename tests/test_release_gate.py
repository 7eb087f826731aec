"""The research risk gate measures what is released, per real person: checked against ground truth.

The region is written here person by person, so the test knows who is who: people shared
by two institutions under one resident ID, people with no resident ID at two institutions,
a person with a resident ID at one institution and none at another, and one planted person
unique in every band. k is recounted from the written research rows and that ground truth,
never from the gate's own code.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa
import yaml

from deid.actions import pseudonym
from hub.demo import generator as G
from hub.fhir.ids import resource_id
from hub.identifiers import resident_id_check_char
from hub.lakehouse.tables import ARROW_SCHEMA, open_catalog
from hub.lineage import runrecord
from hub.pipeline import run_institution
from hub.region import load_region
from hub.research import ReleaseError, build_release, releases
from tests.conftest import with_signing_key

pytestmark = pytest.mark.slow
CF, XS, BC = "city-first", "xihu-second", "beishan-chc"


def _person(n: int, sex: str, birth: dt.date, with_id: bool = True) -> G.Person:
    first17 = f"330106{birth:%Y%m%d}{n * 2 + (1 if sex == 'male' else 0):03d}"
    return G.Person(first17 + resident_id_check_char(first17) if with_id else None, f"测试{n:03d}", sex, birth,
                    f"139{n:08d}", f"浙江省杭州市西湖区测试路{n}号", set())


def cohort() -> list[tuple[str, G.Person, str]]:
    """(real person, the record an institution holds, institution): the ground truth."""
    out = []
    for i in range(6):  # shared: one resident ID at two institutions
        p = _person(i, "female", dt.date(1950 + i % 5, 3, 1 + i))
        out += [(f"A{i}", p, CF), (f"A{i}", p, XS)]
    for i in range(6):
        out.append((f"B{i}", _person(10 + i, "male", dt.date(1960 + i % 5, 5, 1 + i)), BC))
    for i in range(3):  # no resident ID anywhere, at two institutions: one person each
        p = _person(20 + i, "female", dt.date(1970 + i, 7, 10 + i), with_id=False)
        out += [(f"C{i}", p, CF), (f"C{i}", p, XS)]
    for i in range(3):  # a resident ID at city-first, none on file at the community centre
        p = _person(30 + i, "male", dt.date(1980 + i, 9, 3 + i))
        out += [(f"D{i}", p, CF), (f"D{i}", G.Person(None, p.name, p.sex, p.birth, p.phone, p.address, set()), BC)]
    out.append(("planted", _person(40, "male", dt.date(1995, 11, 11)), XS))
    return out


def write_region(ws: Path, people: list[tuple[str, G.Person, str]]) -> dict[tuple[str, str], str]:
    """Write source databases and region.yaml for people; returns (institution, MRN) -> real person."""
    (ws / "sources").mkdir(parents=True, exist_ok=True)
    rng = random.Random(5)
    truth, doc = {}, {"region": "gate-test", "institutions": []}
    for n, inst in enumerate(G.INSTITUTIONS):
        prefix = "M" if inst.his == "his_vendor_a" else "BA"
        enrolled = []
        for real, p, where in people:
            if where == inst.id:
                mrn = f"{prefix}{(n + 1) * 1_000_000 + len(enrolled) + 1:07d}"
                enrolled.append((p, mrn, G._visits(rng, p)))
                truth[(inst.id, mrn)] = real
        feeds = []
        for system, schema in (("his", inst.his), ("lis", inst.lis)):
            db = ws / "sources" / f"{inst.id}-{system}.db"
            G.write_database(f"sqlite:///{db.resolve()}", schema, G._RENDER[schema](inst, enrolled, rng))
            feeds.append({"name": system, "mapping": schema, "url": f"sqlite:///{{workspace}}/sources/{db.name}"})
        doc["institutions"].append({"id": inst.id, "name": inst.name, "level": inst.level, "feeds": feeds})
    (ws / "region.yaml").write_text(yaml.safe_dump(with_signing_key(ws, doc), allow_unicode=True, sort_keys=False), encoding="utf-8")
    return truth


@pytest.fixture(scope="module")
def world(tmp_path_factory, keys):
    ws = tmp_path_factory.mktemp("gate")
    truth = write_region(ws, cohort())
    region = load_region(ws)
    for inst in region.institutions:
        run_institution(region, inst.id, keys)
    return region, truth


def _scan(region, name: str, snapshot_id: int | None = None) -> pa.Table:
    table = open_catalog(region.catalog_url, region.warehouse).load_table(name)
    return table.scan(snapshot_id=snapshot_id).to_arrow() if snapshot_id else table.scan().to_arrow()


def ground_truth_k(region, keys, truth: dict, snapshots: dict[str, int], band: int) -> tuple[int, set[str], int]:
    """(k over real persons, real persons written, distinct patient pseudonyms written) from the written rows."""
    people = {real: p for real, p, _ in cohort()}
    real_of_research_id = {pseudonym(keys, "research-id", resource_id(keys, inst, "patient", [mrn])): real
                           for (inst, mrn), real in truth.items()}
    patients = _scan(region, "research.patient", snapshots["Patient"])
    real_of_pseudonym = {}
    for rid, ps in zip(patients["id"].to_pylist(), patients["patient"].to_pylist(), strict=True):
        real_of_pseudonym[ps] = real_of_research_id[rid]  # KeyError: a written Patient nobody enrolled
    institutions: dict[str, set[str]] = defaultdict(set)
    for rtype, snap in snapshots.items():
        t = _scan(region, f"research.{rtype.lower()}", snap)
        for ps, inst in zip(t["patient"].to_pylist(), t["institution"].to_pylist(), strict=True):
            if ps is not None:
                institutions[real_of_pseudonym[ps]].add(inst)
    classes = Counter(
        (people[real].birth.year - people[real].birth.year % band, people[real].sex, frozenset(insts))
        for real, insts in institutions.items()
    )
    return min(classes.values()), set(institutions), len(real_of_pseudonym)


def test_gate_k_equals_k_of_real_persons_over_written_rows(world, keys):
    region, truth = world
    release = build_release(region, keys, name="truth", k=3, max_suppression=0.1)
    report = release.report
    assert release.status == "published", report.reason
    real_people = {real for real, _, _ in cohort()}
    assert report.people == len(real_people) == 19  # C and D people are one person each, not two
    k_truth, written_people, pseudonyms = ground_truth_k(region, keys, truth, release.snapshots, report.chosen_band)
    assert report.k_achieved == report.k_written == k_truth == 3
    assert pseudonyms > len(written_people)  # counting pseudonyms (the old gate) would have inflated k
    # the planted person is gone from every table; everyone else is there
    assert written_people == real_people - {"planted"} and report.suppressed == 1
    assert report.classes_below_k == [] and len(report.suppressed_classes) == 1
    assert report.suppressed_classes[0]["institution"] == XS and report.suppressed_classes[0]["people"] == 1
    assert 0 < report.levels[-1].share_records_below_k < 0.1
    assert set(report.snapshots_read) >= {"Patient", "Observation"} and report.snapshots_written == release.snapshots
    with runrecord.connect(region.catalog_url).connect() as conn:
        stored = conn.execute(sa.select(releases.c.status, releases.c.risk_report).where(releases.c.name == "truth")).one()
    assert stored.status == "published" and '"snapshots_read"' in stored.risk_report


def test_planted_person_refuses_the_release_when_nobody_may_be_suppressed(world, keys):
    region, _ = world
    before = {t: _snap(region, f"research.{t}") for t in ("patient", "observation")}
    release = build_release(region, keys, name="no-suppression", k=3, max_suppression=0.0)
    assert release.status == "refused" and "cannot be met" in release.report.reason
    assert release.report.levels[-1].people_below_k == 1 and release.report.levels[-1].classes_below_k == 1
    assert {t: _snap(region, f"research.{t}") for t in before} == before


def test_the_same_person_on_two_records_with_two_birth_years_is_one_class(world, keys):
    """Records that disagree on a quasi-identifier: every value observed is part of the person's tuple."""
    from deid.risk import PatientFacts, enforce_k, link_persons, person_tuples

    facts = {f"p{i}": PatientFacts(linked=True, match={(f"195{i % 2}-01-0{i + 1}", "female")}, patient_rows=1) for i in range(6)}
    person_of, _ = link_persons(facts)
    observed = {f"p{i}": {"birth_year": {"1950"}, "sex": {"female"}, "institution": {CF}} for i in range(6)}
    observed["p0"]["birth_year"] = {"1950", "1951"}  # two Patient records of one person disagree
    _, suppressed, report = enforce_k(person_tuples(person_of, observed, ["birth_year", "sex", "institution"]), 3,
                                      ["birth_year", "sex", "institution"], 0.2, ladder=(1,))
    assert suppressed == {"p0"}  # not hidden among the 1950s as its first record would have it


def _snap(region, name: str) -> int | None:
    try:
        s = open_catalog(region.catalog_url, region.warehouse).load_table(name).current_snapshot()
    except Exception:
        return None
    return s.snapshot_id if s else None


def test_release_names_are_unique_and_tags_never_move(world, keys):
    region, _ = world
    first = build_release(region, keys, name="dup", k=3, max_suppression=0.1)
    assert first.status == "published"
    patient = open_catalog(region.catalog_url, region.warehouse).load_table("research.patient")
    tagged = patient.snapshot_by_name("dup").snapshot_id
    with pytest.raises(ReleaseError, match="release name 'dup' is taken"):
        build_release(region, keys, name="dup", k=3, max_suppression=0.1)
    # the database refuses it too, whoever inserts
    engine = runrecord.connect(region.catalog_url)
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(releases.insert().values(release_id="forged", name="dup", created_at=dt.datetime.now(dt.UTC),
                                              status="published", k=3, ruleset="x", key_id="x", risk_report="{}"))
    # a tag someone set by hand on a research table is never moved by a release of that name
    patient.refresh().manage_snapshots().create_tag(patient.current_snapshot().snapshot_id, "by-hand").commit()
    current = {t: _snap(region, f"research.{t}") for t in ("patient", "observation")}
    with pytest.raises(ReleaseError, match="already has a tag 'by-hand'"):
        build_release(region, keys, name="by-hand", k=3, max_suppression=0.1)
    assert {t: _snap(region, f"research.{t}") for t in current} == current
    assert patient.refresh().snapshot_by_name("dup").snapshot_id == tagged
    # a refused release does not hold its name
    assert build_release(region, keys, name="retry", k=50).status == "refused"
    assert build_release(region, keys, name="retry", k=3, max_suppression=0.1).status == "published"


def test_release_reads_one_pinned_snapshot_while_a_publish_commits(world, keys, monkeypatch):
    """A publish that commits between the gate and the write is not in the release."""
    import hub.research as research

    region, _ = world
    icat = open_catalog(region.catalog_url, region.warehouse)
    rec = icat.load_table("recognition.patient")
    pinned = rec.current_snapshot().snapshot_id
    original = research.enforce_k
    intruder = {}

    def publish_between_passes(*args, **kwargs):
        row = rec.refresh().scan(limit=1).to_arrow().to_pylist()[0]
        row.update(id="f" * 32, patient="e" * 32, institution=CF)
        rec.append(pa.Table.from_pylist([row], schema=ARROW_SCHEMA))  # a commit, as a publish makes
        intruder["snapshot"] = rec.current_snapshot().snapshot_id
        return original(*args, **kwargs)

    monkeypatch.setattr(research, "enforce_k", publish_between_passes)
    release = build_release(region, keys, name="pinned", k=3, max_suppression=0.1)
    assert release.status == "published"
    assert intruder["snapshot"] != pinned and release.report.snapshots_read["Patient"] == pinned
    written = _scan(region, "research.patient", release.snapshots["Patient"])
    assert pseudonym(keys, "research-linkage", "e" * 32) not in written["patient"].to_pylist()
    at_pin = _scan(region, "recognition.patient", pinned).num_rows
    assert written.num_rows == at_pin - 1  # every pinned Patient record but the planted person's
