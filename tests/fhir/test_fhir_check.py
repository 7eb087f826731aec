"""hub's fast FHIR checks (hub.fhir.check) against fhir.resources, the oracle.

The fast checks replace per-row pydantic validation on the hot path, so they must never
accept what fhir.resources rejects. They may reject more only for the documented reasons
(wrong JSON type for a primitive, null for a required element, resourceType inside a
datatype, a python attribute name such as ``class_`` for a JSON name); every mutation here checks that too.
"""

from __future__ import annotations

import copy
import random
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from hub.fhir.check import Validator, check
from hub.fhir.jsonio import loads
from hub.fhir.validate import validation_problems

DATA = Path(__file__).parents[1] / "data"
GOLDEN = [loads(line) for f in sorted(DATA.glob("*/expected/*.ndjson")) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]

#: Values a mutation writes anywhere: wrong types, empty things, bad dates, bad codes and ids.
VALUES = ["", " ", None, 5, 1.5, True, False, "2024-02-30", "2024-13", "2024-02-03T10:00:00", "x y", " x", "a_b", [], {},
          [None], {"foo": 1}, "1.5", "notadate", 2**40, -1, 0, Decimal("1.50"), float("nan"), float("inf"), "true", "5", "2024",
          "2024-02-03T10:00:00+08:00", "2024-02-03T10:00:60Z", [{}], [1], ["a"], "a\nb", "a  b"]
#: Keys a mutation adds to some object: unknown ones, python names, a second choice type, extensions.
KEYS = ["foo", "class_", "valueString", "_status", "valueInteger", "resourceType", "extension", "id", "text", "display",
        "code", "system", "value", "unit", "_value", "status__ext"]


def _paths(node, path=()):
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*path, i))


def _mutate(resource: dict, rng: random.Random) -> dict:
    r = copy.deepcopy(resource)
    nodes = list(_paths(r))[1:]
    path, node = rng.choice(nodes)
    parent = r
    for k in path[:-1]:
        parent = parent[k]
    key, op = path[-1], rng.randrange(5)
    if op == 0:
        del parent[key]
    elif op in (1, 4):
        parent[key] = copy.deepcopy(rng.choice(VALUES))
    elif op == 2:
        target = rng.choice([n for _, n in _paths(r) if isinstance(n, dict)])
        target[rng.choice(KEYS)] = copy.deepcopy(rng.choice(VALUES))
    elif isinstance(node, list) and node:
        parent[key] = node[0]
    else:
        parent[key] = [node]
    return r


def _stricter_on_purpose(problems: list[tuple[str, str]]) -> bool:
    """The documented cases where hub rejects what the models coerce or ignore."""
    def documented(path: str, msg: str) -> bool:
        key = path.rsplit(".", 1)[-1]
        python_name = key.endswith("_") or "__" in key  # the models also accept their attribute names
        return "(a JSON" in msg or "is required" in msg or (
            msg == "Extra inputs are not permitted" and (key == "resourceType" or python_name))
    return all(documented(path, msg) for path, msg in problems)


def test_every_golden_resource_is_valid_for_both():
    assert len(GOLDEN) > 50
    for resource in GOLDEN:
        assert check(resource) == [], resource["resourceType"]
        assert validation_problems(resource) == []


@pytest.mark.parametrize("seed", range(4))
def test_mutations_never_pass_the_fast_checks_when_the_oracle_rejects_them(seed):
    rng = random.Random(seed)
    compared = deferred = 0
    for _ in range(1500):
        original = rng.choice(GOLDEN)
        mutated = _mutate(original, rng)
        if mutated.get("resourceType") != original["resourceType"]:
            continue  # the oracle itself needs a resource type to pick a model
        fast, slow = check(mutated), validation_problems(mutated)
        if fast is None:
            deferred += 1
            continue
        compared += 1
        if slow:
            assert fast, f"fast checks accept what fhir.resources rejects: {slow}"
        elif fast:
            assert _stricter_on_purpose(fast), f"fast checks reject what fhir.resources accepts, for no documented reason: {fast}"
    assert compared > 1000 and deferred < compared / 10


def test_the_problems_name_the_element_as_the_oracle_does():
    obs = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"coding": [{"code": " bad"}]},
           "effectiveDateTime": "2024-02-30", "valueQuantity": {"value": Decimal("1.5")}, "foo": 1}
    assert sorted(p for p, _ in check(obs)) == sorted(p for p, _ in validation_problems(obs))


def test_json_types_are_checked_strictly_because_the_dict_is_what_is_published():
    obs = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"}, "valueInteger": "5"}
    assert validation_problems(obs) == []  # the model would coerce "5" to 5 ...
    assert check(obs) == [("Observation.valueInteger", "Input should be a valid integer (a JSON number)")]  # ... hub publishes "5"


def test_what_the_fast_checks_cannot_judge_goes_to_the_oracle():
    patient = {"resourceType": "Patient", "id": "p1", "_birthDate": {"extension": [{"url": "http://example.org/x", "valueString": "y"}]}}
    assert check(patient) is None
    validator = Validator(oracle_every=0)
    assert validator.problems(patient) == [] and validator.oracle_runs == 1
    bad = {**patient, "_birthDate": {}}
    assert validator.problems(bad) and validator.oracle_runs == 2


def test_a_sampled_disagreement_holds_the_row():
    validator = Validator(oracle_every=1)
    obs = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"}, "valueBoolean": "true"}
    problems = validator.problems(obs)
    assert validator.disagreements == 1
    assert "disagree" in problems[0][1]


def test_every_resource_of_the_demo_is_valid_for_both(tmp_path, keys):
    from hub.demo.generator import generate_region
    from hub.mapping.compile import CompiledBlock
    from hub.mapping.run import block_select
    from hub.mapping.spec import load_mapping
    from hub.region import load_region
    from hub.sources.sql import SourceSchema, iter_batches

    generate_region(tmp_path, patients=15)
    region = load_region(tmp_path)
    seen = set()
    for inst in region.institutions:
        for feed in inst.feeds:
            if feed.kind != "sql":
                continue
            mapping = load_mapping(feed.mapping)
            engine = sa.create_engine(feed.url)
            schema = SourceSchema(engine)
            for block in mapping.blocks:
                compiled = CompiledBlock(mapping, block, inst.id, keys)
                for batch in iter_batches(engine, block_select(compiled, schema), 1000):
                    for row in batch:
                        resource, _ = compiled.map_row(row)
                        if resource is None:
                            continue
                        assert check(resource) == [] and validation_problems(resource) == [], block.resource
                        seen.add(block.resource)
            engine.dispose()
    assert {"Patient", "Encounter", "Observation", "DiagnosticReport", "MedicationRequest", "Condition"} <= seen


def test_the_sampling_interval_is_region_configuration(tmp_path):
    from hub.region import load_region
    from hub.yamlio import ConfigError

    (tmp_path / "region.yaml").write_text("institutions: []\nvalidation: {oracle_every: 1}\n", encoding="utf-8")
    assert load_region(tmp_path).validation_oracle_every == 1
    (tmp_path / "region.yaml").write_text("institutions: []\nvalidation: {oracle_every: 0}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"validation\.oracle_every"):
        load_region(tmp_path)
