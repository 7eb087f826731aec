"""The recognition FHIR API: searches for a patient's results with a recognition verdict on each.

``GET /fhir/Observation`` and ``GET /fhir/DiagnosticReport`` with
``patient.identifier=<system>|<value>``, optional ``code=<system>|<code>`` (comma-separated),
``date=ge<date>`` and ``requester=<institution id>``; a searchset Bundle whose entries carry
the verdict in ``meta.tag`` and in an extension. Each institution has its own bearer token
and may query only as itself. Errors are OperationOutcomes. ``POST /fhir/recognition-decision``
records a doctor's accept or re-test decision. Every query and decision goes to the access
log; the patient identifier is turned into a pseudonym and never stored or logged (the
server runs without uvicorn's access log, which would print query strings).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from pathlib import Path

import sqlalchemy as sa
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from deid.keys import Keyring
from hub.lineage import access
from hub.lineage import catalog as runcat
from hub.recognition.catalog import Catalog
from hub.recognition.index import decisions
from hub.recognition.query import VERDICTS, UnknownIdentifier, patient_for, query
from hub.region import Region

FHIR_JSON = "application/fhir+json"
VERDICT_SYSTEM = "urn:hub:recognition-verdict"
EXTENSION_URL = "urn:hub:ext:recognition"
log = logging.getLogger("hub.recognition")


def token_file(region: Region) -> Path:
    return region.workspace / "recognition_tokens.yaml"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load_tokens(region: Region) -> dict[str, str]:
    """sha256(token) -> institution id; tokens themselves are never stored."""
    path = token_file(region)
    if not path.exists():
        return {}
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {h: inst for inst, h in (doc.get("institutions") or {}).items()}


def issue_token(region: Region, institution: str) -> str:
    """A new bearer token for an institution (replacing its old one); only its hash is kept."""
    import secrets

    region.institution(institution)
    path = token_file(region)
    doc = (yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else None) or {"institutions": {}}
    token = secrets.token_urlsafe(32)
    doc["institutions"][institution] = token_hash(token)
    path.write_text("# sha256 of each institution's recognition API token (issued by `hub recognition token`)\n"
                    + yaml.safe_dump(doc), encoding="utf-8")
    path.chmod(0o600)
    return token


def outcome(status: int, code: str, text: str) -> JSONResponse:
    return JSONResponse(status_code=status, media_type=FHIR_JSON, content={
        "resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": text}]})


class Decision(BaseModel):
    resource: str  # Observation/<id> or DiagnosticReport/<id>
    decision: str  # accept | retest
    reason: str | None = None  # a code from recognition/reasons.yaml, required for retest


def create_app(region: Region, keys: Keyring, index: sa.Engine, catalog: Catalog, tokens: dict[str, str] | None = None) -> FastAPI:
    app = FastAPI(title="hub recognition API", version="1", description=__doc__)
    audit = runcat.connect(region.catalog_url)
    tokens = load_tokens(region) if tokens is None else tokens

    def caller(request: Request) -> str | JSONResponse:
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            return outcome(401, "login", "missing bearer token")
        inst = tokens.get(token_hash(auth[7:].strip()))
        if inst is None:
            return outcome(401, "login", "unknown or revoked token")
        return inst

    def search(request: Request, resource_type: str):
        who = caller(request)
        if isinstance(who, JSONResponse):
            return who
        params = request.query_params
        requester = params.get("requester", who)
        if requester != who:
            access.record(audit, "recognition-query", "recognition", {"requester": requester, "refused": "another institution's id"}, "refused", who=who)
            return outcome(403, "forbidden", f"this token belongs to {who}; it cannot query as {requester}")
        ident = params.get("patient.identifier")
        if not ident or "|" not in ident:
            return outcome(400, "required", "patient.identifier=<system>|<value> is required")
        system, value = ident.split("|", 1)
        codes = [c.split("|")[-1] for c in params.get("code", "").split(",") if c] or None
        since = None
        date = params.get("date")
        if date:
            if not date.startswith("ge"):
                return outcome(400, "not-supported", "only date=ge<date> is supported")
            try:
                since = dt.datetime.fromisoformat(date[2:])
                since = since if since.tzinfo else since.replace(tzinfo=dt.UTC)
            except ValueError:
                return outcome(400, "invalid", "date must be ge followed by an ISO date, e.g. ge2024-01-01")
        try:
            patient = patient_for(index, keys, system, value)
        except UnknownIdentifier as exc:
            return outcome(400, "not-supported", str(exc))
        verdicts = query(index, catalog, patient, requester, codes, since=since, resource_type=resource_type) if patient else []
        entries = []
        for v in verdicts:
            resource = dict(v.observation)
            resource["meta"] = {"tag": [{"system": VERDICT_SYSTEM, "code": v.code, "display": v.reason}]}
            ext = [{"url": "verdict", "valueCode": v.code}, {"url": "reason", "valueString": v.reason}, {"url": "issuer", "valueString": v.institution}]
            if v.mark:
                ext.append({"url": "mark", "valueString": v.mark})
            if v.age_days is not None:
                ext.append({"url": "ageDays", "valueInteger": v.age_days})
            if v.window_days is not None:
                ext.append({"url": "windowDays", "valueInteger": v.window_days})
            resource["extension"] = [{"url": EXTENSION_URL, "extension": ext}]
            entries.append({"fullUrl": f"{resource_type}/{resource['id']}", "resource": resource, "search": {"mode": "match"}})
        counts: dict[str, int] = {}
        for v in verdicts:
            counts[v.code] = counts.get(v.code, 0) + 1
        access.record(audit, "recognition-query", "recognition", {"requester": requester, "resource": resource_type,
                      "codes": codes, "results": len(verdicts), "verdicts": counts}, who=who)
        log.info("recognition query by %s: %s results", who, len(verdicts))
        return JSONResponse(media_type=FHIR_JSON, content={"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries})

    @app.get("/fhir/Observation", summary="Search a patient's lab results with recognition verdicts")
    def observations(request: Request):
        return search(request, "Observation")

    @app.get("/fhir/DiagnosticReport", summary="Search a patient's reports with recognition verdicts")
    def reports(request: Request):
        return search(request, "DiagnosticReport")

    @app.post("/fhir/recognition-decision", summary="Record a doctor's accept or re-test decision")
    def decide(request: Request, body: Decision):
        who = caller(request)
        if isinstance(who, JSONResponse):
            return who
        if body.decision not in ("accept", "retest"):
            return outcome(400, "invalid", "decision must be accept or retest")
        if body.decision == "retest" and body.reason not in catalog.reasons:
            return outcome(400, "invalid", f"a re-test needs a reason code: one of {', '.join(catalog.reasons)}")
        with index.begin() as conn:
            conn.execute(decisions.insert().values(at=dt.datetime.now(dt.UTC), institution=who, observation_id=body.resource.split("/")[-1],
                                                   decision=body.decision, reason=body.reason))
        access.record(audit, "recognition-decision", "recognition", {"resource": body.resource, "decision": body.decision, "reason": body.reason}, who=who)
        return JSONResponse(status_code=201, media_type=FHIR_JSON, content={"resourceType": "OperationOutcome", "issue": [
            {"severity": "information", "code": "informational", "diagnostics": f"{body.decision} recorded"}]})

    @app.get("/fhir/metadata", summary="CapabilityStatement")
    def metadata():
        search_params = [{"name": "patient.identifier", "type": "token"}, {"name": "code", "type": "token"},
                         {"name": "date", "type": "date"}, {"name": "requester", "type": "string"}]
        return JSONResponse(media_type=FHIR_JSON, content={
            "resourceType": "CapabilityStatement", "status": "active", "date": dt.date.today().isoformat(), "kind": "instance",
            "fhirVersion": "4.0.1", "format": ["json"],
            "implementation": {"description": f"hub recognition API ({catalog.mark} {catalog.scope}); verdicts: {', '.join(VERDICTS)}"},
            "rest": [{"mode": "server", "security": {"description": "Bearer token per institution"}, "resource": [
                {"type": t, "interaction": [{"code": "search-type"}], "searchParam": search_params}
                for t in ("Observation", "DiagnosticReport")]}]})

    @app.exception_handler(Exception)
    def failure(request: Request, exc: Exception):  # never echo the request (it holds an identifier)
        log.error("recognition API error: %s", type(exc).__name__)
        return outcome(500, "exception", "internal error")

    return app
