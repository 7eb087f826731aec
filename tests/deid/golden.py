"""The de-identification golden scenario: identified input -> recognition zone -> research zone."""

from __future__ import annotations

import json
from pathlib import Path

from deid.engine import Deidentifier, patient_pseudonym
from deid.keys import Keyring
from deid.ruleset import default_ruleset_path, load_ruleset
from hub.fhir.jsonio import dumps, loads

FOLDER = Path(__file__).resolve().parents[1] / "data" / "deid"


def run(keys: Keyring) -> dict[str, dict[str, dict]]:
    """{zone: {file stem: output}} for every input resource; the patient is the input Patient,
    whose identifying values are the known values scrubbed from every resource's strings."""
    inputs = {p.stem: loads(p.read_text(encoding="utf-8")) for p in sorted((FOLDER / "input").glob("*.json"))}
    recognition = Deidentifier(load_ruleset(default_ruleset_path(), "recognition"), keys)
    research = Deidentifier(load_ruleset(default_ruleset_path(), "research"), keys)
    known = recognition.identifying_values(inputs["patient"])  # the record's own name, IDs, phone, address
    rec = {k: recognition.apply(v, known_names=known) for k, v in inputs.items()}
    patient = patient_pseudonym(rec["patient"])
    res = {k: research.apply(v, patient=patient) for k, v in rec.items()}
    return {"recognition": rec, "research": res}


def canonical(resource: dict) -> dict:
    return json.loads(dumps(resource))
