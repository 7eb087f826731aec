"""Differential FHIRPath test: hub's evaluator and fhirpathpy (R4 model) must agree.

Every expression of tests/data/fhirpath/corpus.txt runs over the golden resources
(tests/data/*/expected/*.ndjson) and tests/data/fhirpath/resources.ndjson through both
engines. Results are compared as plain values (numbers by value, dates by their text); an
error on one side only is a disagreement. A documented difference (``## refused:`` or
``## hub only:``, ``## differs:``) must still hold, so a stale note fails the test too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import fhirpathpy  # the oracle; a dev dependency (pyproject [dev]), so CI fails rather than skips without it
import pytest
from fhirpathpy.models import models

from hub.views.fhirpath import FhirPathError, evaluate
from tests.conftest import DATA

CORPUS = DATA / "fhirpath" / "corpus.txt"
R4 = models["r4"]


@dataclass(frozen=True)
class Case:
    line: int
    type: str
    expression: str
    note: str  # "", "refused: ...", "hub only: ..." or "differs: ..."


def load_corpus(path: Path = CORPUS) -> list[Case]:
    cases = []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        text, _, note = raw.partition("  ## ")
        type_, sep, expression = text.partition(": ")
        assert sep and expression.strip(), f"corpus.txt line {n}: expected 'Type: expression', got {raw!r}"
        note = note.strip()
        assert not note or note.split(":")[0] in ("refused", "differs", "hub only"), f"corpus.txt line {n}: unknown note {note!r}"
        cases.append(Case(n, type_.strip(), expression.strip(), note))
    return cases


def load_resources() -> list[dict]:
    files = sorted(DATA.glob("*/expected/*.ndjson")) + [DATA / "fhirpath" / "resources.ndjson"]
    out = []
    for f in files:
        out += [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    return out


def _norm(v: Any) -> Any:
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, (int, float, Decimal)):
        return ("num", Decimal(repr(v) if isinstance(v, float) else v).normalize())
    if isinstance(v, str):
        return v
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_norm(x) for x in v]
    return str(v)  # fhirpathpy's FP_DateTime / FP_Time / FP_Quantity


def run_hub(case: Case, res: dict) -> tuple[str, Any]:
    try:
        return "ok", _norm(evaluate(case.expression, res))
    except FhirPathError as exc:
        return "error", str(exc)


def run_fhirpathpy(case: Case, res: dict) -> tuple[str, Any]:
    try:
        got = fhirpathpy.evaluate(json.loads(json.dumps(res)), case.expression,
                                  {"resource": res, "rootResource": res}, model=R4)
        return "ok", _norm(got)
    except Exception as exc:  # noqa: BLE001 - any failure of the oracle counts as an error answer
        return "error", f"{type(exc).__name__}: {exc}"


CASES = load_corpus()
RESOURCES = load_resources()


def _resources_for(case: Case) -> list[dict]:
    return [r for r in RESOURCES if case.type in ("*", r["resourceType"])]


def test_the_corpus_is_large_and_covers_the_supported_functions_and_operators():
    from hub.views.fhirpath import FUNCTIONS

    assert len(CASES) >= 200
    text = CORPUS.read_text(encoding="utf-8")
    missing = [f for f in FUNCTIONS if f"{f}(" not in text]
    assert missing == []
    for op in (" + ", " - ", " * ", " / ", " div ", " mod ", " & ", " | ", " = ", " != ", " ~ ", " !~ ", " < ",
               " <= ", " > ", " >= ", " is ", " as ", " and ", " or ", " xor ", " implies ", "[0]", "$this",
               "$index", "%resource", "%rowIndex", "@20", "@T", " year"):
        assert op in text, op
    assert all(_resources_for(c) for c in CASES), [c.expression for c in CASES if not _resources_for(c)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"L{c.line}")
def test_hub_and_fhirpathpy_agree(case: Case):
    resources = _resources_for(case)
    if case.note.startswith("refused"):
        answers = [run_hub(case, res) for res in resources]
        assert all(kind == "error" and msg.startswith("FHIRPath ") for kind, msg in answers), answers
        return
    if case.note.startswith("hub only"):  # hub answers everywhere; fhirpathpy fails somewhere, agrees elsewhere
        oracle_failed = False
        for res in resources:
            hub, oracle = run_hub(case, res), run_fhirpathpy(case, res)
            assert hub[0] == "ok", (res["id"], hub)
            oracle_failed = oracle_failed or oracle[0] == "error"
            assert oracle[0] == "error" or hub == oracle, (res["id"], hub, oracle)
        assert oracle_failed, f"line {case.line}: fhirpathpy now answers; remove the note"
        return
    disagreements = []
    for res in resources:
        hub, oracle = run_hub(case, res), run_fhirpathpy(case, res)
        same = hub[0] == oracle[0] == "error" or hub == oracle
        if not same:
            disagreements.append((res["resourceType"], res["id"], hub, oracle))
    if case.note.startswith("differs"):
        assert disagreements, f"line {case.line}: documented difference no longer holds; remove the note"
    else:
        assert disagreements == [], f"corpus.txt line {case.line}: {case.expression}"
