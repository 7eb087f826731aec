"""Recognition queries: which results of a patient may a requesting institution recognise, and why.

The requester gives the identifier it knows: a resident ID number (checked: 18 characters
and a valid GB 11643 check character) or an MRN of its own institution, never another
institution's (MRNs are sequential, so another institution's would be enumerable). The hub
turns it into the patient pseudonym and never stores or logs the identifier. Each result
gets a verdict: recognisable (with the mark and scope, e.g. HR 杭州市), or not, with the
reason: same institution, not on the list, not final, issuing lab failed EQA, outside the
item's validity window.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import sqlalchemy as sa

from deid.actions import pseudonym
from deid.keys import Keyring
from hub.identifiers import is_valid_resident_id
from hub.recognition.index import patient_ids, results
from hub.recognition.rules import RecognitionRules

ID_CARD_SYSTEMS = ("urn:oid:2.16.156.10011.1.3", "urn:oid:2.16.840.1.113883.2.23.1.19.1")
FINAL = ("final", "amended", "corrected")
VERDICTS = {
    "recognisable": "recognisable",
    "same-institution": "issued by the requesting institution itself",
    "not-listed": "the item is not on the region's recognised list",
    "not-final": "the result is not final",
    "eqa-failed": "the issuing laboratory did not pass external quality assessment for this item and year",
    "eqa-unknown": "no external quality assessment record for the issuing laboratory, item and year",
    "outside-window": "older than the item's validity window",
}


RESOURCE_TYPES = ("Observation", "DiagnosticReport")


class IdentifierRefused(ValueError):
    """An identifier the requester may not look up. The message never holds the identifier's value.

    ``status`` and ``code`` are the HTTP status and OperationOutcome issue code the API answers
    with; ``cause`` is a short label for the access log.
    """

    status, code, cause = 400, "invalid", "invalid identifier"


class UnknownIdentifier(IdentifierRefused):
    """The identifier system is not one the hub can link."""

    code, cause = "not-supported", "unknown identifier system"


class InvalidIdentifier(IdentifierRefused):
    """The value cannot be an identifier of its system (a resident ID number failing its check)."""

    cause = "malformed identifier"


class ForeignIdentifier(IdentifierRefused):
    """An MRN of another institution than the requester's."""

    status, code, cause = 403, "forbidden", "another institution's MRN system"


def mrn_system(institution: str) -> str:
    return f"urn:hub:{institution}:mrn"


@dataclass(frozen=True)
class Verdict:
    observation: dict
    institution: str
    loinc: str
    code: str  # a key of VERDICTS
    recognisable: bool
    reason: str
    mark: str | None  # e.g. "HR 杭州市" when recognisable
    age_days: int | None
    window_days: int | None


def check_identifier(system: str, value: str, requester: str | None) -> None:
    """Refuse what the requester may not look up: raise an IdentifierRefused, else return.

    A resident ID number must have 18 characters and a valid check character; an MRN must be
    the requester's own (``urn:hub:<requester>:mrn``) and not empty.
    """
    if system in ID_CARD_SYSTEMS:
        if not is_valid_resident_id(value):
            raise InvalidIdentifier("the resident ID number is not valid: it needs 18 characters (17 digits with a real "
                                    "birth date, then a correct GB 11643 check character, 0-9 or X)")
        return
    if system.startswith("urn:hub:") and system.endswith(":mrn"):
        if requester is None or system != mrn_system(requester):
            who = f"{requester!r} may look up only its own MRNs ({mrn_system(requester)})" if requester else "an MRN lookup needs the requesting institution"
            raise ForeignIdentifier(f"{who}, or a resident ID number")
        if not value.strip():
            raise InvalidIdentifier("the MRN is empty")
        return
    # the system is caller text (it may hold the identifier itself): not repeated
    raise UnknownIdentifier(f"this identifier system is not accepted; use {ID_CARD_SYSTEMS[0]} (resident ID number) "
                            f"or {mrn_system(requester or '<your institution>')} (your own MRN)")


def patient_for(engine: sa.Engine, keys: Keyring, system: str, value: str, requester: str | None = None) -> str | None:
    """The linkage pseudonym for an identifier as the requesting hospital knows it (None: no such patient).

    Raises an IdentifierRefused for anything ``check_identifier`` refuses: without a
    requester, only resident ID numbers are accepted.
    """
    check_identifier(system, value, requester)
    if system in ID_CARD_SYSTEMS:
        return pseudonym(keys, "patient-linkage", value)
    with engine.connect() as conn:
        return conn.execute(sa.select(patient_ids.c.patient).where(
            patient_ids.c.identifier == pseudonym(keys, "identifier", value, system))).scalar()


def known_patient(engine: sa.Engine, patient: str) -> bool:
    """Whether the index holds any result of this patient (a lookup that finds none is a miss)."""
    with engine.connect() as conn:
        return conn.execute(sa.select(results.c.patient).where(results.c.patient == patient).limit(1)).first() is not None


def result_exists(engine: sa.Engine, resource_type: str, resource_id: str) -> bool:
    """Whether the index holds this result (the only ones a decision may be recorded on)."""
    with engine.connect() as conn:
        return conn.execute(sa.select(results.c.observation_id).where(
            results.c.resource_type == resource_type, results.c.observation_id == resource_id).limit(1)).first() is not None


def judge(rules: RecognitionRules, requester: str, loinc: str, institution: str, status: str, when: dt.datetime | None, at: dt.datetime) -> tuple[str, int | None, int | None]:
    """(verdict code, age in days, window) for one result; checks in the order a doctor would."""
    item = rules.items.get(loinc)
    age = (at - when).days if when else None
    window = item.window_days if item else None
    if institution == requester:
        return "same-institution", age, window
    if item is None:
        return "not-listed", age, window
    if status not in FINAL:
        return "not-final", age, window
    eqa = rules.eqa_passed(institution, loinc, when.year) if when else None
    if eqa is False:
        return "eqa-failed", age, window
    if eqa is None:
        return "eqa-unknown", age, window
    if age is None or age > item.window_days or age < 0:
        return "outside-window", age, window
    return "recognisable", age, window


def verdict_for(rules: RecognitionRules, requester: str, resource: dict, loinc: str, institution: str, status: str,
                when: dt.datetime | None, at: dt.datetime) -> Verdict:
    """The verdict on one result for a requester, judged at ``at``."""
    code, age, window = judge(rules, requester, loinc, institution, status, when, at)
    ok = code == "recognisable"
    return Verdict(resource, institution, loinc, code, ok, VERDICTS[code],
                   f"{rules.mark} {rules.scope}".strip() if ok else None, age, window)


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    return value if value is None or value.tzinfo else value.replace(tzinfo=dt.UTC)


def query(engine: sa.Engine, rules: RecognitionRules, patient: str, requester: str, loincs: list[str] | None = None,
          at: dt.datetime | None = None, since: dt.datetime | None = None, resource_type: str = "Observation") -> list[Verdict]:
    """A patient's results with their verdicts, in a stable order (item, newest first, issuer, id): pages do not shift."""
    at = at or dt.datetime.now(dt.UTC)
    q = sa.select(results).where(results.c.patient == patient, results.c.resource_type == resource_type)
    if loincs:
        q = q.where(results.c.loinc.in_(loincs))
    out = []
    with engine.connect() as conn:
        rows = list(conn.execute(q.order_by(results.c.loinc, results.c.effective_time.desc(), results.c.institution,
                                            results.c.observation_id)))
    for r in rows:
        when = _utc(r.effective_time)
        if (since and when and when < since) or (when and when > at):
            continue  # outside the asked period, or after the moment being judged
        out.append(verdict_for(rules, requester, json.loads(r.resource), r.loinc, r.institution, r.status, when, at))
    return out


def indexed_result(engine: sa.Engine, resource_type: str, resource_id: str) -> sa.Row | None:
    """The index's row of one result (patient, loinc, institution, status, effective_time, resource), or None."""
    with engine.connect() as conn:
        return conn.execute(sa.select(results).where(
            results.c.resource_type == resource_type, results.c.observation_id == resource_id).limit(1)).first()
