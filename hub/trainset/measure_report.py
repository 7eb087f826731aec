"""FHIR R4 MeasureReports of the guideline indicators: one per institution, month and indicator.

Each is a ``summary`` report whose one group carries the populations ``initial-population``
(the managed patients), ``denominator`` (those measured that month) and ``numerator`` (those
at target), and ``measureScore`` (numerator / denominator; absent when nobody was measured).
The indicator configuration and its version are in ``measure`` (a canonical URL with
``|version``) and in the group's code system, so a report says which targets it used.
Ids are derived from (config, version, indicator, institution, month): a re-run gives the
same resources.
"""

from __future__ import annotations

import calendar
import hashlib
import json
from pathlib import Path

MEASURE_BASE = "urn:hub:measure"
INSTITUTION_SYSTEM = "urn:hub:institution"
_POPULATION = "http://terminology.hl7.org/CodeSystem/measure-population"
_IMPROVEMENT = "http://terminology.hl7.org/CodeSystem/measure-improvement-notation"


def _population(code: str, count: int) -> dict:
    return {"code": {"coding": [{"system": _POPULATION, "code": code}]}, "count": count}


def measure_report(row: dict) -> dict:
    """The MeasureReport of one indicator row (hub.trainset.indicators.COLUMNS)."""
    year, month = (int(x) for x in row["month"].split("-"))
    key = "|".join((row["config"], row["config_version"], row["indicator"], row["institution"], row["month"]))
    group = {
        "code": {"coding": [{"system": f"{MEASURE_BASE}:{row['config']}", "code": row["indicator"]}], "text": row["title"]},
        "population": [_population("initial-population", row["managed"]), _population("denominator", row["denominator"]),
                       _population("numerator", row["numerator"])],
    }
    if row["denominator"]:
        group["measureScore"] = {"value": row["share"] if row["share"] is not None else round(row["numerator"] / row["denominator"], 4)}
    return {
        "resourceType": "MeasureReport",
        "id": hashlib.sha256(key.encode()).hexdigest()[:32],
        "identifier": [{"system": f"{MEASURE_BASE}:report", "value": key}],
        "status": "complete",
        "type": "summary",
        "measure": f"{MEASURE_BASE}:{row['config']}:{row['indicator']}|{row['config_version']}",
        "reporter": {"identifier": {"system": INSTITUTION_SYSTEM, "value": row["institution"]},
                     "display": row.get("institution_name") or row["institution"]},
        "period": {"start": f"{year:04d}-{month:02d}-01", "end": f"{year:04d}-{month:02d}-{calendar.monthrange(year, month)[1]:02d}"},
        "improvementNotation": {"coding": [{"system": _IMPROVEMENT, "code": "increase"}]},
        "group": [group],
    }


def measure_reports(rows: list[dict]) -> list[dict]:
    """A MeasureReport per row, in the rows' order."""
    return [measure_report(r) for r in rows]


def to_ndjson(rows: list[dict]) -> str:
    """The MeasureReports of the rows as NDJSON text (one resource per line)."""
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in measure_reports(rows))


def write_ndjson(region, rows: list[dict], folder: Path, keys=None) -> Path:
    """Write folder/MeasureReport.ndjson through the sink (leak scan, signed manifest); returns the file."""
    from hub.lakehouse.sink import Publication

    path = Path(folder) / "MeasureReport.ndjson"
    with Publication.open(region, keys, "export") as pub:
        pub.write_text(to_ndjson(rows), path)
        pub.commit()
        pub.finish({"export": "MeasureReport", "rows": len(rows)})
    return path
