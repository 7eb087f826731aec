"""Re-identification risk: k-anonymity over quasi-identifiers, and the gate a research release must pass.

People, not records, are counted: each person (research linkage pseudonym) has one tuple
of quasi-identifiers (birth year, sex, ...). A class is the set of people sharing a tuple;
k is the size of the smallest class. The gate generalizes birth year step by step (year,
then 5-, 10- and 20-year bands); if k still fails, it suppresses the people in classes
smaller than k, as long as they are at most ``max_suppression`` of everyone. Otherwise the
release is refused and nothing is published.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

#: birth-year band widths tried in order (1 = the year itself)
LADDER = (1, 5, 10, 20)


@dataclass
class LevelReport:
    band: int
    k: int
    classes: int
    people_below_k: int
    share_below_k: float


@dataclass
class RiskReport:
    """What the gate measured and decided; stored with the release."""

    k_required: int
    quasi_identifiers: list[str]
    people: int
    levels: list[LevelReport] = field(default_factory=list)
    chosen_band: int | None = None
    suppressed: int = 0
    k_achieved: int = 0
    max_suppression: float = 0.0
    passed: bool = False
    reason: str = ""

    def as_dict(self) -> dict:
        return {**{k: v for k, v in self.__dict__.items() if k != "levels"}, "levels": [lv.__dict__ for lv in self.levels]}


class RiskGateFailed(Exception):
    def __init__(self, report: RiskReport):
        self.report = report
        super().__init__(report.reason)


def band_year(year: str | None, width: int) -> str | None:
    if year is None or not str(year)[:4].isdigit():
        return year
    y = int(str(year)[:4])
    return str(y - y % width) if width > 1 else str(y)


def generalize_people(people: Mapping[str, tuple], width: int) -> dict[str, tuple]:
    """Quasi-identifier tuples (birth year first) with birth year banded to width years."""
    return {p: (band_year(q[0], width), *q[1:]) for p, q in people.items()}


def measure(people: Mapping[str, tuple], k: int) -> tuple[int, int, set[str]]:
    """(smallest class size, number of classes, people in classes smaller than k)."""
    sizes = Counter(people.values())
    below = {p for p, q in people.items() if sizes[q] < k}
    return (min(sizes.values()) if sizes else 0), len(sizes), below


def enforce_k(
    people: Mapping[str, tuple], k: int, names: list[str], max_suppression: float = 0.05, ladder: tuple[int, ...] = LADDER,
) -> tuple[int, set[str], RiskReport]:
    """Find the least generalization (then suppression) meeting k: (band width, people to suppress, report).

    Raises RiskGateFailed, carrying the report, when no ladder step with at most
    max_suppression of people suppressed reaches k.
    """
    report = RiskReport(k_required=k, quasi_identifiers=names, people=len(people), max_suppression=max_suppression)
    if not people:
        report.reason = "no people in the release"
        raise RiskGateFailed(report)
    for width in ladder:
        banded = generalize_people(people, width)
        k_min, classes, below = measure(banded, k)
        report.levels.append(LevelReport(width, k_min, classes, len(below), round(len(below) / len(people), 4)))
        if len(below) / len(people) <= max_suppression:
            report.chosen_band, report.suppressed, report.passed = width, len(below), True
            kept = {p: q for p, q in banded.items() if p not in below}
            report.k_achieved = measure(kept, k)[0] if kept else 0
            report.reason = f"k={k} holds with birth year in {width}-year bands" + (f" after suppressing {len(below)} people" if below else "")
            return width, below, report
    last = report.levels[-1]
    report.reason = (
        f"k={k} cannot be met: even with {last.band}-year birth-year bands, {last.people_below_k} of {len(people)} people "
        f"({last.share_below_k:.1%}) are in classes smaller than k; at most {max_suppression:.1%} may be suppressed"
    )
    raise RiskGateFailed(report)
