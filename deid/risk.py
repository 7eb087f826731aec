"""Re-identification risk: who is one real person, what a release shows of them, and the k-anonymity gate.

The gate counts people, not records, and measures what is released:

- **One person** is one linkage pseudonym (resident ID number) across institutions. A patient
  record without one (only an MRN) is joined to every other record with the same exact birth
  date and sex, wherever it is, because it may be any of them: the count may merge two real
  people (k only goes down) but never splits one real person in two (which would inflate k).
  A record without a resident ID and without a birth date or sex cannot be joined safely and
  is left out of the release (``unlinkable``), as is a person with rows but no Patient row.
- **A person's quasi-identifiers** are every value observed over all their released rows: the
  set of birth years of all their Patient records, the set of sexes, the set of institutions
  they appear at (an attacker who follows one pseudonym sees all of them). Two birth years on
  record is a tuple of its own, not the first one seen.
- **The gate** generalizes birth year step by step (year, then 5-, 10- and 20-year bands); at
  the first step where the people in classes smaller than k are at most ``max_suppression``
  of everyone, those people are suppressed (every row of theirs, in every table). Otherwise
  the release is refused and nothing is published.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: birth-year band widths tried in order (1 = the year itself)
LADDER = (1, 5, 10, 20)
#: quasi-identifiers the gate knows by name; any other name is a top-level Patient element
BIRTH_YEAR, SEX, INSTITUTION = "birth_year", "sex", "institution"
DEFAULT_QUASI_IDENTIFIERS = (BIRTH_YEAR, SEX, INSTITUTION)
ALIASES = {"gender": SEX, "birthDate": BIRTH_YEAR, "birth-year": BIRTH_YEAR}
UNKNOWN = "unknown"

QI = tuple[frozenset, ...]


@dataclass
class LevelReport:
    band: int
    k: int
    classes: int
    people_below_k: int
    share_below_k: float
    classes_below_k: int = 0
    records_below_k: int = 0
    share_records_below_k: float = 0.0


@dataclass
class RiskReport:
    """What the gate measured and decided; stored with the release."""

    k_required: int
    quasi_identifiers: list[str]
    people: int
    records: int = 0
    levels: list[LevelReport] = field(default_factory=list)
    chosen_band: int | None = None
    suppressed: int = 0
    records_suppressed: int = 0
    k_achieved: int = 0
    max_suppression: float = 0.0
    passed: bool = False
    reason: str = ""
    #: classes smaller than k in what is released: must be empty when passed
    classes_below_k: list[dict] = field(default_factory=list)
    #: classes smaller than k at the chosen step, before suppression (their people were suppressed)
    suppressed_classes: list[dict] = field(default_factory=list)
    linkage: dict = field(default_factory=dict)
    snapshots_read: dict[str, int] = field(default_factory=dict)
    snapshots_written: dict[str, int] = field(default_factory=dict)
    key_ids: list[str] = field(default_factory=list)
    k_written: int | None = None

    def as_dict(self) -> dict:
        return {**{k: v for k, v in self.__dict__.items() if k != "levels"}, "levels": [lv.__dict__ for lv in self.levels]}


class RiskGateFailed(Exception):
    def __init__(self, report: RiskReport):
        self.report = report
        super().__init__(report.reason)


def canonical_qi(name: str) -> str:
    """The gate's name for a quasi-identifier (``gender`` is ``sex``, ``birthDate`` is ``birth_year``)."""
    return ALIASES.get(name, name)


def band_year(year: str | None, width: int) -> str | None:
    if year is None or not str(year)[:4].isdigit():
        return year
    y = int(str(year)[:4])
    return str(y - y % width) if width > 1 else str(y)


def _as_set(value) -> frozenset:
    return value if isinstance(value, frozenset) else frozenset(value) if isinstance(value, set) else frozenset([value])


def generalize_people(people: Mapping[str, tuple], width: int, names: list[str] | None = None) -> dict[str, QI]:
    """Quasi-identifier tuples, every value a set, with each birth year banded to width years.

    Birth year is the element named birth_year, else the first.
    """
    at = names.index(BIRTH_YEAR) if names and BIRTH_YEAR in names else (None if names else 0)
    out = {}
    for p, q in people.items():
        sets = [_as_set(v) for v in q]
        if at is not None:
            sets[at] = frozenset(band_year(y, width) for y in sets[at])
        out[p] = tuple(sets)
    return out


def measure(people: Mapping[str, tuple], k: int) -> tuple[int, int, set[str]]:
    """(smallest class size, number of classes, people in classes smaller than k)."""
    sizes = Counter(people.values())
    below = {p for p, q in people.items() if sizes[q] < k}
    return (min(sizes.values()) if sizes else 0), len(sizes), below


def describe_class(names: list[str], q: tuple) -> dict[str, str]:
    """A class as {quasi-identifier: value, values joined by '|'} for the report."""
    return {n: "|".join(sorted(UNKNOWN if v is None else str(v) for v in _as_set(val))) for n, val in zip(names, q, strict=True)}


def small_classes(people: Mapping[str, tuple], k: int, names: list[str]) -> list[dict]:
    """Every class smaller than k, with its size, smallest first."""
    sizes = Counter(people.values())
    return sorted(({**describe_class(names, q), "people": n} for q, n in sizes.items() if n < k), key=lambda c: c["people"])


def enforce_k(
    people: Mapping[str, tuple], k: int, names: list[str], max_suppression: float = 0.05, ladder: tuple[int, ...] = LADDER,
    records: Mapping[str, int] | None = None,
) -> tuple[int, set[str], RiskReport]:
    """Find the least generalization (then suppression) meeting k: (band width, people to suppress, report).

    people: person -> quasi-identifier values in the order of names, each a value or a set
    of observed values. records: person -> rows released for them (for the share of records
    in small classes; one each when not given). Raises RiskGateFailed, carrying the report,
    when no ladder step with at most max_suppression of people suppressed reaches k.
    """
    records = records if records is not None else dict.fromkeys(people, 1)
    total_records = sum(records.get(p, 0) for p in people)
    report = RiskReport(k_required=k, quasi_identifiers=list(names), people=len(people), records=total_records, max_suppression=max_suppression)
    if not people:
        report.reason = "no people in the release"
        raise RiskGateFailed(report)
    if BIRTH_YEAR not in names:
        ladder = ladder[:1]
    for width in ladder:
        banded = generalize_people(people, width, names)
        k_min, classes, below = measure(banded, k)
        below_records = sum(records.get(p, 0) for p in below)
        report.levels.append(LevelReport(
            width, k_min, classes, len(below), round(len(below) / len(people), 4),
            classes_below_k=len({banded[p] for p in below}), records_below_k=below_records,
            share_records_below_k=round(below_records / total_records, 4) if total_records else 0.0,
        ))
        if len(below) / len(people) <= max_suppression:
            kept = {p: q for p, q in banded.items() if p not in below}
            report.chosen_band, report.suppressed, report.records_suppressed = width, len(below), below_records
            report.suppressed_classes = small_classes({p: banded[p] for p in below}, k, names)
            report.classes_below_k = small_classes(kept, k, names)
            report.k_achieved = measure(kept, k)[0] if kept else 0
            report.passed = bool(kept) and not report.classes_below_k
            if not report.passed:
                report.reason = f"k={k} cannot be met: suppressing the {len(below)} people in small classes leaves nobody"
                raise RiskGateFailed(report)
            report.reason = f"k={k} holds with birth year in {width}-year bands" + (f" after suppressing {len(below)} people" if below else "")
            return width, below, report
    last = report.levels[-1]
    report.reason = (
        f"k={k} cannot be met: even with {last.band}-year birth-year bands, {last.people_below_k} of {len(people)} people "
        f"({last.share_below_k:.1%}) are in classes smaller than k; at most {max_suppression:.1%} may be suppressed"
    )
    raise RiskGateFailed(report)


# ---- who is one person -------------------------------------------------------------------------

@dataclass
class PatientFacts:
    """What the gate knows of one patient key (the recognition zone's ``patient`` column value)."""

    linked: bool = False  # the key is a resident-ID linkage pseudonym: the same person at every institution
    match: set[tuple] = field(default_factory=set)  # (exact birth date, sex) of each of its Patient records
    patient_rows: int = 0


def link_persons(facts: Mapping[str, PatientFacts]) -> tuple[dict[str, str], set[str]]:
    """Group patient keys into real persons, conservatively: (key -> person, unlinkable keys).

    A linked key is a person of its own, unless an unlinked key shares its exact birth date
    and sex: an unlinked key joins every key (linked or not, any institution) with the same
    (birth date, sex), transitively. Keys with rows but no Patient row, and unlinked keys
    missing a birth date or sex, are unlinkable: they cannot be counted without risking one
    real person counted twice, so the caller leaves them out of the release. A person is
    named by the smallest key in it.
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    unlinkable = set()
    by_match: dict[tuple, list[str]] = defaultdict(list)
    for key, f in facts.items():
        if f.patient_rows == 0 or (not f.linked and (not f.match or any(None in m for m in f.match))):
            unlinkable.add(key)
            continue
        parent[key] = key
        for m in f.match:
            if None not in m:
                by_match[m].append(key)
    for keys in by_match.values():
        if len(keys) > 1 and any(not facts[k].linked for k in keys):
            roots = sorted({find(k) for k in keys})
            for r in roots[1:]:
                parent[r] = roots[0]
    components: dict[str, list[str]] = defaultdict(list)
    for key in parent:
        components[find(key)].append(key)
    person_of = {}
    for members in components.values():
        name = min(members)
        for key in members:
            person_of[key] = name
    return person_of, unlinkable


def person_tuples(
    person_of: Mapping[str, str], observed: Mapping[str, Mapping[str, Iterable]], names: list[str],
) -> dict[str, QI]:
    """Each person's quasi-identifier tuple: per name, the set of every value observed on any of its keys.

    observed: patient key -> {quasi-identifier name: values seen on that key's released rows}.
    A name with no value observed is {None} (shown as unknown).
    """
    acc: dict[str, list[set]] = {}
    for key, person in person_of.items():
        sets = acc.setdefault(person, [set() for _ in names])
        seen = observed.get(key, {})
        for i, n in enumerate(names):
            sets[i].update(seen.get(n, ()))
    return {p: tuple(frozenset(s) if s else frozenset([None]) for s in sets) for p, sets in acc.items()}
