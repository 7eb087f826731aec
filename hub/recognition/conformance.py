"""What the recognition API declares about itself: CapabilityStatement, SearchParameters, OperationDefinition.

Everything here is served as it is declared (``/fhir/metadata``, ``/fhir/SearchParameter/<id>``,
``/fhir/OperationDefinition/<id>``), and canonical URLs are built from the server's base URL
so that a client can resolve them on the same server. The patient search is a chain
(``patient`` of type reference, chain ``identifier``): only ``patient.identifier`` is
accepted. ``requester`` and ``at`` are hub parameters about the request, not elements of
the resource, hence of type ``special``.
"""

from __future__ import annotations

import datetime as dt

SEARCHED = ("Observation", "DiagnosticReport")
OPERATION = "recognition-decision"
DEFAULT_COUNT = 100
MAX_COUNT = 1000


def _search_parameters(base: str) -> dict[str, dict]:
    both = list(SEARCHED)
    return {
        "hub-patient": {
            "resourceType": "SearchParameter", "id": "hub-patient", "url": f"{base}/SearchParameter/hub-patient",
            "name": "patient", "status": "active", "experimental": False,
            "derivedFrom": "http://hl7.org/fhir/SearchParameter/clinical-patient",
            "description": "The patient the result is about, only as the chain patient.identifier=<system>|<value>: a resident "
                           "ID number (urn:oid:2.16.156.10011.1.3 or urn:oid:2.16.840.1.113883.2.23.1.19.1, 18 characters, valid "
                           "GB 11643 check character) or the requester's own MRN (urn:hub:<institution>:mrn). Required.",
            "code": "patient", "base": both, "type": "reference",
            "expression": "Observation.subject.where(resolve() is Patient) | DiagnosticReport.subject.where(resolve() is Patient)",
            "target": ["Patient"], "chain": ["identifier"],
        },
        "hub-requester": {
            "resourceType": "SearchParameter", "id": "hub-requester", "url": f"{base}/SearchParameter/hub-requester",
            "name": "requester", "status": "active", "experimental": False,
            "description": "The requesting institution's id; it must be the bearer token's institution (default: the token's). "
                           "Verdicts are given as this institution sees the results (its own are 'same-institution').",
            "code": "requester", "base": both, "type": "special",
        },
        "hub-at": {
            "resourceType": "SearchParameter", "id": "hub-at", "url": f"{base}/SearchParameter/hub-at",
            "name": "at", "status": "active", "experimental": False,
            "description": "Evaluation time of the recognition verdicts (ISO date or dateTime; a date is midnight UTC, a dateTime "
                           "without offset is UTC); default now. Results after it are not shown. '_at' is accepted too. The "
                           "Bundle's links carry the time used, so paging judges every page at the same moment.",
            "code": "at", "base": both, "type": "special",
        },
    }


def search_parameter(base: str, sp_id: str) -> dict | None:
    return _search_parameters(base).get(sp_id)


def operation_definition(base: str, op_id: str) -> dict | None:
    if op_id != OPERATION:
        return None
    return {
        "resourceType": "OperationDefinition", "id": OPERATION, "url": f"{base}/OperationDefinition/{OPERATION}",
        "name": "RecognitionDecision", "title": "Record a doctor's recognition decision on a result",
        "status": "active", "kind": "operation", "affectsState": True, "code": OPERATION,
        "description": "Records that the requesting institution's doctor accepts a result from another institution "
                       "(mutual recognition) or re-tests, with a reason code from the region's list. Only results the "
                       "recognition index holds and the caller has looked up can be decided on. Returns the decision and "
                       "the result's recognition verdict as of 'at'.",
        "system": True, "type": False, "instance": False,
        "parameter": [
            {"name": "resource", "use": "in", "min": 1, "max": "1", "type": "Reference",
             "targetProfile": ["http://hl7.org/fhir/StructureDefinition/Observation", "http://hl7.org/fhir/StructureDefinition/DiagnosticReport"],
             "documentation": "The result as the search returned it: its fullUrl, or Observation/<id> or DiagnosticReport/<id>."},
            {"name": "decision", "use": "in", "min": 1, "max": "1", "type": "code", "documentation": "accept | retest"},
            {"name": "reason", "use": "in", "min": 0, "max": "1", "type": "code",
             "documentation": "A re-test reason code of the region's list (required for retest); never free text."},
            {"name": "at", "use": "in", "min": 0, "max": "1", "type": "dateTime",
             "documentation": "Evaluation time of the verdict returned; default now. The decision is recorded at the time it is received."},
            {"name": "decision", "use": "out", "min": 1, "max": "1", "type": "code", "documentation": "The decision recorded."},
            {"name": "reason", "use": "out", "min": 0, "max": "1", "type": "code", "documentation": "The reason recorded."},
            {"name": "verdict", "use": "out", "min": 1, "max": "1", "type": "code",
             "documentation": "The result's recognition verdict for the requester at 'at' (recognisable, outside-window, ...)."},
            {"name": "at", "use": "out", "min": 1, "max": "1", "type": "dateTime", "documentation": "The evaluation time used."},
        ],
    }


def capability_statement(base: str, description: str, version: str = "1") -> dict:
    """The server's CapabilityStatement: read for four types, search for two, and the decision operation."""
    params = _search_parameters(base)
    search_params = [
        {"name": "patient", "definition": params["hub-patient"]["url"], "type": "reference",
         "documentation": "Chained only: patient.identifier=<system>|<value> (required)."},
        {"name": "code", "definition": "http://hl7.org/fhir/SearchParameter/clinical-code", "type": "token",
         "documentation": "http://loinc.org|<code>, comma-separated for several; default every item."},
        {"name": "date", "definition": "http://hl7.org/fhir/SearchParameter/clinical-date", "type": "date",
         "documentation": "Only the ge prefix: date=ge<date or dateTime>."},
        {"name": "requester", "definition": params["hub-requester"]["url"], "type": "special",
         "documentation": params["hub-requester"]["description"]},
        {"name": "at", "definition": params["hub-at"]["url"], "type": "special", "documentation": params["hub-at"]["description"]},
    ]
    common = {"versioning": "no-version", "readHistory": False, "updateCreate": False, "conditionalCreate": False,
              "conditionalRead": "not-supported", "conditionalUpdate": False, "conditionalDelete": "not-supported",
              "referencePolicy": ["literal", "local"]}
    resources = [
        {"type": t, "interaction": [{"code": "read"}, {"code": "search-type"}], **common, "searchParam": search_params,
         "documentation": "Results of one patient with a recognition verdict each (meta.tag urn:hub:recognition-verdict and the "
                          "extension urn:hub:ext:recognition). Paged: _count (default "
                          f"{DEFAULT_COUNT}, at most {MAX_COUNT}) and the Bundle's next link. Read: results of a person the "
                          "caller has searched for."}
        for t in SEARCHED
    ] + [
        {"type": "Patient", "interaction": [{"code": "read"}], **common,
         "documentation": "Pseudonymised patients (recognition zone), for persons the caller has searched for."},
        {"type": "Organization", "interaction": [{"code": "read"}], **common,
         "documentation": "The region's institutions, the performers of results."},
        {"type": "SearchParameter", "interaction": [{"code": "read"}], "versioning": "no-version"},
        {"type": "OperationDefinition", "interaction": [{"code": "read"}], "versioning": "no-version"},
    ]
    return {
        "resourceType": "CapabilityStatement", "status": "active", "date": dt.date.today().isoformat(),
        "publisher": "hub", "kind": "instance",
        "software": {"name": "hub recognition API", "version": version},
        "implementation": {"description": description, "url": base},
        "fhirVersion": "4.0.1", "format": ["json"],
        "rest": [{
            "mode": "server",
            "documentation": "Read-only, apart from recording recognition decisions. Every error is an OperationOutcome.",
            "security": {"cors": False, "description": "A bearer token per institution (Authorization: Bearer <token>), "
                                                      "issued by the region's operator; metadata and definitions need none."},
            "resource": resources,
            "operation": [{"name": OPERATION, "definition": f"{base}/OperationDefinition/{OPERATION}",
                           "documentation": "POST [base]/$recognition-decision with a Parameters resource."}],
        }],
    }
