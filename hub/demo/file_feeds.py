"""The demo's two institutions that do not open a database: one sends HL7 v2, one exports FHIR NDJSON.

Both draw from the same synthetic people as the SQL institutions (hub.demo.generator hands
them over), so a person can have results at a hospital's LIS, at the independent lab and
in the FHIR export:

- ``gongshu-lab`` (an independent laboratory) drops ORU^R01 messages into a folder, in GB18030
  with MSH-18 ``GB 18030-2000`` (the character set many Chinese LIS still send), several
  messages per file, read by ``mappings/hl7v2_oru_r01.yaml``;
- ``binjiang-fhir`` (a hospital whose EHR offers bulk export) writes ``Patient.ndjson`` and
  ``Observation.ndjson`` (gzip) as a FHIR server's ``$export`` would.

Nothing here is real: names, numbers and addresses come from the generator's Faker.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class FileInstitution:
    id: str
    name: str
    level: str
    kind: str  # hl7v2 | ndjson
    share: float  # probability a person has results here


FILE_INSTITUTIONS = [
    FileInstitution("gongshu-lab", "拱墅区独立医学检验实验室", "independent laboratory", "hl7v2", 0.06),
    FileInstitution("binjiang-fhir", "滨江区医院", "secondary hospital", "ndjson", 0.06),
]
RESIDENT_ID_SYSTEM = "urn:oid:2.16.156.10011.1.3"
_SEX_V2 = {"male": "M", "female": "F"}
_STATUS_V2 = {"final": "F", "preliminary": "P", "corrected": "C"}
_STATUS_FHIR = {"final": "final", "preliminary": "preliminary", "corrected": "corrected"}
MESSAGES_PER_FILE = 50
MIN_MEMBERS = 3  # people with results at each file institution, however small the demo


#: The generator's visit maker: (rng, person, first day) -> visits with orders and results.
Visits = Callable[[random.Random, Any, dt.datetime], list]


def _members(inst: FileInstitution, people: list, visits: Visits, seed: int, start: dt.datetime, n: int):
    rng = random.Random(seed * 53 + n)
    chosen = [p for p in people if rng.random() < inst.share]
    if len(chosen) < MIN_MEMBERS:  # a small demo still shows the feed at work
        chosen += [p for p in people if p not in chosen][:MIN_MEMBERS - len(chosen)]
    return [(p, f"{inst.id[:2].upper()}{(n + 1) * 1_000_000 + i + 1:07d}", visits(rng, p, start)) for i, p in enumerate(chosen)]


def _v2(text: str) -> str:
    """A value made safe for an HL7 v2 field (the demo's values carry no delimiters but '^')."""
    return text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\").replace("&", "\\T\\").replace("~", "\\R\\")


def _ts(t: dt.datetime) -> str:
    return f"{t:%Y%m%d%H%M%S}+0800"


def _oru(inst: FileInstitution, person, mrn: str, order, control: str) -> str:
    family, given = person.name[:1], person.name[1:]
    ids = f"{mrn}^^^{inst.id.upper()}^MR" + (f"~{person.id_number}^^^CHN^NI" if person.id_number else "")
    segments = [
        f"MSH|^~\\&|LIS|{inst.id.upper()}|HUB|REGION|{_ts(order.report)}||ORU^R01^ORU_R01|{control}|P|2.5.1|||AL|NE|CHN|GB 18030-2000",
        f"PID|1||{ids}||{_v2(family)}^{_v2(given)}^^^^^L||{person.birth:%Y%m%d}|{_SEX_V2[person.sex]}|||{_v2(person.address)}^^杭州市^ZJ^310000^CHN"
        f"||{person.phone}",
        f"OBR|1|{control}-P|{control}-F|{order.panel.loinc}^{_v2(order.panel.loinc_display)}^LN|||{_ts(order.collect)}"
        f"||||||||||||||{_ts(order.report)}||{_STATUS_V2[order.status]}",
    ]
    for i, (item, value, flag) in enumerate(order.results, start=1):
        numeric = value.replace(".", "", 1).isdigit()
        segments.append(
            f"OBX|{i}|{'NM' if numeric else 'ST'}|{item.loinc}^{_v2(item.loinc_display)}^LN||{_v2(value)}|{item.ucum or ''}|{_v2(item.ref)}"
            f"|{flag if flag in ('H', 'L') else 'N'}|||{_STATUS_V2[order.status]}|||{_ts(order.collect)}")
    return "\r".join(segments) + "\r"


def write_hl7v2_drop(folder: Path, inst: FileInstitution, members) -> int:
    """ORU^R01 messages in GB18030, MESSAGES_PER_FILE per file, in report order; returns how many."""
    folder.mkdir(parents=True, exist_ok=True)
    messages = sorted(((order.report, person, mrn, order) for person, mrn, visits in members for v in visits for order in v.orders),
                      key=lambda m: (m[0], m[2], m[3].panel.key))
    for start in range(0, len(messages), MESSAGES_PER_FILE):
        chunk = messages[start:start + MESSAGES_PER_FILE]
        text = "".join(_oru(inst, person, mrn, order, f"{inst.id[:2].upper()}{start + i + 1:08d}")
                       for i, (_, person, mrn, order) in enumerate(chunk))
        (folder / f"oru-{start // MESSAGES_PER_FILE + 1:04d}.hl7").write_bytes(text.encode("gb18030"))
    return len(messages)


def write_ndjson_export(folder: Path, inst: FileInstitution, members) -> dict[str, int]:
    """Patient.ndjson.gz and Observation.ndjson.gz of the institution's people; returns counts."""
    folder.mkdir(parents=True, exist_ok=True)
    patients, observations = [], []
    for person, mrn, visits in members:
        pid = f"pat-{mrn}"
        identifiers = [{"system": f"urn:hub:{inst.id}:mrn", "value": mrn}]
        if person.id_number:
            identifiers.append({"system": RESIDENT_ID_SYSTEM, "value": person.id_number})
        patients.append({
            "resourceType": "Patient", "id": pid, "identifier": identifiers,
            "name": [{"text": person.name, "family": person.name[:1], "given": [person.name[1:]]}],
            "gender": person.sex, "birthDate": person.birth.isoformat(),
            "telecom": [{"system": "phone", "value": person.phone}], "address": [{"text": person.address}],
        })
        for v, visit in enumerate(visits):
            for o, order in enumerate(visit.orders):
                for r, (item, value, flag) in enumerate(order.results):
                    obs = {
                        "resourceType": "Observation", "id": f"obs-{mrn}-{v}-{o}-{r}", "status": _STATUS_FHIR[order.status],
                        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
                        "code": {"coding": [{"system": "http://loinc.org", "code": item.loinc, "display": item.loinc_display}]},
                        "subject": {"reference": f"Patient/{pid}"},
                        "effectiveDateTime": order.collect.strftime("%Y-%m-%dT%H:%M:%S+08:00"),
                        "issued": order.report.strftime("%Y-%m-%dT%H:%M:%S+08:00"),
                    }
                    if value.replace(".", "", 1).isdigit() and item.ucum:
                        obs["valueQuantity"] = {"value": float(value) if "." in value else int(value), "unit": item.ucum,
                                                "system": "http://unitsofmeasure.org", "code": item.ucum}
                    else:
                        obs["valueString"] = value
                    if flag in ("H", "L"):
                        obs["interpretation"] = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": flag}]}]
                    observations.append(obs)
    for name, rows in (("Patient", patients), ("Observation", observations)):
        with gzip.open(folder / f"{name}.ndjson.gz", "wt", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {"Patient": len(patients), "Observation": len(observations)}


def generate_file_feeds(workspace: Path, people: list, visits: Visits, seed: int,
                        start: dt.datetime) -> tuple[list[dict], dict[str, dict[str, int]]]:
    """Write both institutions' files under workspace/sources for the generator's people (its
    visit maker and first day given by hub.demo.generator); return region.yaml entries and counts."""
    entries, counts = [], {}
    for n, inst in enumerate(FILE_INSTITUTIONS):
        members = _members(inst, people, visits, seed, start, n)
        folder = Path(workspace) / "sources" / inst.id
        if inst.kind == "hl7v2":
            counts[f"{inst.id}/lis"] = {"messages": write_hl7v2_drop(folder, inst, members)}
            feed = {"name": "lis", "kind": "hl7v2", "path": f"{{workspace}}/sources/{inst.id}", "mapping": ["hl7v2_oru_r01"],
                    "encoding": "GB 18030-2000"}
        else:
            counts[f"{inst.id}/export"] = write_ndjson_export(folder, inst, members)
            feed = {"name": "export", "kind": "ndjson", "path": f"{{workspace}}/sources/{inst.id}"}
        entries.append({"id": inst.id, "name": inst.name, "level": inst.level, "feeds": [feed]})
    return entries, counts
