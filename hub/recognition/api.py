"""The recognition FHIR API: searches for a patient's results with a recognition verdict on each.

``GET /fhir/Observation`` and ``GET /fhir/DiagnosticReport`` with
``patient.identifier=<system>|<value>``, optional ``code=<system>|<code>`` (comma-separated),
``date=ge<date>`` and ``requester=<institution id>``; a searchset Bundle whose entries carry
the verdict in ``meta.tag`` and in an extension. ``POST /fhir/recognition-decision``
records a doctor's accept or re-test decision on a result the index holds.

Least privilege: each institution has its own bearer token and may query only as itself,
only by a valid resident ID number or by an MRN of its own; anything else is refused with
an OperationOutcome (400, 401, 403, 404). Tokens are read from the token file whenever it
changes, so issuing and revoking take effect on a running server. Every query, decision
and refusal goes to the access log; the patient identifier is turned into a pseudonym and
never stored or logged (the server runs without uvicorn's access log, which would print
query strings, and request validation errors are answered without echoing the input).

Limits (``hub.recognition.limits``, configured in region.yaml): each token's lookups are
rate-limited (429 throttled with Retry-After), and lookups by resident ID number that find
no patient draw on a much smaller miss budget; exceeding it suspends the token and writes a
``recognition-alert`` entry to the access log. A miss answers exactly as a known person with
nothing to show does: the same empty Bundle, after the same queries.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import sqlalchemy as sa
import yaml
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from deid.keys import Keyring
from hub.lineage import access
from hub.lineage import catalog as runcat
from hub.recognition.catalog import Catalog
from hub.recognition.index import decisions
from hub.recognition.limits import Limiter, Refusal, load_limits
from hub.recognition.query import (
    ID_CARD_SYSTEMS,
    RESOURCE_TYPES,
    VERDICTS,
    IdentifierRefused,
    known_patient,
    mrn_system,
    patient_for,
    query,
    result_exists,
)
from hub.region import Region

FHIR_JSON = "application/fhir+json"
VERDICT_SYSTEM = "urn:hub:recognition-verdict"
EXTENSION_URL = "urn:hub:ext:recognition"
ANONYMOUS = "(no valid token)"
log = logging.getLogger("hub.recognition")


def token_file(region: Region) -> Path:
    return region.workspace / "recognition_tokens.yaml"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _read_tokens(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {h: inst for inst, h in (doc.get("institutions") or {}).items()}


def load_tokens(region: Region) -> dict[str, str]:
    """sha256(token) -> institution id; tokens themselves are never stored."""
    return _read_tokens(token_file(region))


class TokenStore:
    """The token file as the server sees it: re-read whenever it changes.

    Each lookup compares the file's (mtime, size, inode) with the last read, one ``stat``
    per request, so a token issued or revoked with ``hub recognition token`` counts from
    the next request without restarting the server. The file is replaced atomically, so a
    reader never sees half a file.
    """

    def __init__(self, path: Path):
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._tokens: dict[str, str] = {}
        self._lock = threading.Lock()

    def _current(self) -> dict[str, str]:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                self._tokens = _read_tokens(self.path) if stamp else {}
                self._stamp = stamp
            return self._tokens

    def institution(self, token: str) -> str | None:
        return self._current().get(token_hash(token))


def _write_tokens(path: Path, doc: dict) -> None:
    """Replace the token file atomically, readable by its owner only."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("# sha256 of each institution's recognition API token (issued by `hub recognition token`)\n" + yaml.safe_dump(doc))
    os.replace(tmp, path)


def _token_doc(path: Path) -> dict:
    doc = (yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else None) or {}
    doc.setdefault("institutions", {})
    doc["institutions"] = doc["institutions"] or {}
    return doc


def issue_token(region: Region, institution: str) -> str:
    """A new bearer token for an institution (replacing its old one); only its hash is kept."""
    region.institution(institution)
    path = token_file(region)
    doc = _token_doc(path)
    token = secrets.token_urlsafe(32)
    doc["institutions"][institution] = token_hash(token)
    _write_tokens(path, doc)
    return token


def revoke_token(region: Region, institution: str) -> bool:
    """Remove an institution's token; True when it had one. A running server refuses it at once."""
    path = token_file(region)
    doc = _token_doc(path)
    if doc["institutions"].pop(institution, None) is None:
        return False
    _write_tokens(path, doc)
    return True


def outcome(status: int, code: str, text: str) -> JSONResponse:
    return JSONResponse(status_code=status, media_type=FHIR_JSON, content={
        "resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": text}]})


class Decision(BaseModel):
    resource: str  # Observation/<id> or DiagnosticReport/<id>
    decision: str  # accept | retest
    reason: str | None = None  # a code from recognition/reasons.yaml, required for retest


def _bearer(request: Request) -> str:
    return request.headers.get("authorization", "")[7:].strip()


def create_app(region: Region, keys: Keyring, index: sa.Engine, catalog: Catalog, tokens: dict[str, str] | None = None,
               clock: Callable[[], float] = time.time) -> FastAPI:
    """The API over an index. Without ``tokens``, the region's token file is followed live.

    The limits are region.yaml's ``recognition_limits``; their state is kept in the index
    database and written through on shutdown. ``clock`` (epoch seconds) is for tests.
    """
    limiter = Limiter(load_limits(region), index, clock)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        limiter.flush()

    app = FastAPI(title="hub recognition API", version="1", description=__doc__, lifespan=lifespan)
    app.state.limiter = limiter
    audit = runcat.connect(region.catalog_url)
    store = TokenStore(token_file(region)) if tokens is None else None

    def refuse(status: int, code: str, text: str, who: str, action: str, what: dict) -> JSONResponse:
        """Answer with an OperationOutcome and write the refusal to the access log (never an identifier)."""
        access.record(audit, action, "recognition", {**what, "status": status}, "refused", who=who)
        log.info("recognition %s refused (%s) for %s", action.removeprefix("recognition-"), status, who)
        return outcome(status, code, text)

    def throttle(refusal: Refusal, who: str, action: str, what: dict) -> JSONResponse:
        response = refuse(429, "throttled", refusal.text, who, action, {**what, "refused": refusal.cause})
        response.headers["Retry-After"] = str(refusal.retry_after)
        return response

    def token_owner(request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            return None
        token = _bearer(request)
        return store.institution(token) if store is not None else tokens.get(token_hash(token))

    def caller(request: Request, action: str) -> str | JSONResponse:
        if not request.headers.get("authorization", "").lower().startswith("bearer "):
            return refuse(401, "login", "missing bearer token", ANONYMOUS, action, {"refused": "no bearer token"})
        inst = token_owner(request)
        if inst is None:
            return refuse(401, "login", "unknown or revoked token", ANONYMOUS, action, {"refused": "unknown or revoked token"})
        return inst

    # institutions and identifier systems named in the access log; other caller text is not logged
    institutions = {i.id for i in region.institutions}
    loggable_systems = {*ID_CARD_SYSTEMS, *(mrn_system(i) for i in institutions)}

    def search(request: Request, resource_type: str):
        action = "recognition-query"
        who = caller(request, action)
        if isinstance(who, JSONResponse):
            return who
        params = request.query_params
        requester = params.get("requester", who)
        what = {"requester": requester if requester in institutions else "(other)", "resource": resource_type}
        bearer = token_hash(_bearer(request))
        limited = limiter.admit(bearer, who)
        if limited is not None:
            return throttle(limited, who, action, what)
        if requester != who:
            return refuse(403, "forbidden", f"this token belongs to {who}; it cannot query as {requester}", who, action,
                          {**what, "refused": "another institution's id"})
        ident = params.get("patient.identifier")
        if not ident or "|" not in ident:
            return refuse(400, "required", "patient.identifier=<system>|<value> is required", who, action,
                          {**what, "refused": "no patient.identifier"})
        system, value = ident.split("|", 1)
        codes = [c.split("|")[-1] for c in params.get("code", "").split(",") if c] or None
        since = None
        date = params.get("date")
        if date:
            if not date.startswith("ge"):
                return refuse(400, "not-supported", "only date=ge<date> is supported", who, action, {**what, "refused": "date prefix"})
            try:
                since = dt.datetime.fromisoformat(date[2:])
                since = since if since.tzinfo else since.replace(tzinfo=dt.UTC)
            except ValueError:
                return refuse(400, "invalid", "date must be ge followed by an ISO date, e.g. ge2024-01-01", who, action,
                              {**what, "refused": "date format"})
        try:
            patient = patient_for(index, keys, system, value, requester=who)
        except IdentifierRefused as exc:
            shown = system if system in loggable_systems else "(other)"
            return refuse(exc.status, exc.code, str(exc), who, action, {**what, "system": shown, "refused": exc.cause})
        by_id = system in ID_CARD_SYSTEMS
        # both queries run for every lookup, known person or not: a miss must not answer faster
        known = known_patient(index, patient or "")
        verdicts = query(index, catalog, patient or "", requester, codes, since=since, resource_type=resource_type)
        if by_id and not known:
            until = limiter.miss(bearer, who)
            if until is not None:
                limits = limiter.policy.of(who)
                access.record(audit, "recognition-alert", "recognition", {
                    "alert": "miss budget exceeded: lookups by resident ID number that found no patient (possible enumeration)",
                    "misses_per_hour": limits.misses_per_hour, "suspended_minutes": limits.suspend_minutes,
                    "suspended_until": dt.datetime.fromtimestamp(until, dt.UTC).isoformat(timespec="seconds"),
                    "lift": f"hub recognition token {who}"}, "refused", who=who)
                log.warning("recognition: token of %s suspended until %s after too many lookups that found no patient",
                            who, dt.datetime.fromtimestamp(until, dt.UTC).isoformat(timespec="seconds"))
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
        found = {"patient_known": known} if by_id else {}
        access.record(audit, action, "recognition", {**what, **found, "codes": codes, "results": len(verdicts), "verdicts": counts}, who=who)
        log.info("recognition query by %s: %s results", who, len(verdicts))
        return JSONResponse(media_type=FHIR_JSON, content={"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries})

    @app.get("/fhir/Observation", summary="Search a patient's lab results with recognition verdicts")
    def observations(request: Request):
        return search(request, "Observation")

    @app.get("/fhir/DiagnosticReport", summary="Search a patient's reports with recognition verdicts")
    def reports(request: Request):
        return search(request, "DiagnosticReport")

    @app.post("/fhir/recognition-decision", summary="Record a doctor's accept or re-test decision on a result the index holds")
    def decide(request: Request, body: Decision):
        action = "recognition-decision"
        who = caller(request, action)
        if isinstance(who, JSONResponse):
            return who
        suspended = limiter.admit(token_hash(_bearer(request)), who, take=False)
        if suspended is not None:
            return throttle(suspended, who, action, {"refused": suspended.cause})
        rtype, _, rid = body.resource.partition("/")
        if rtype not in RESOURCE_TYPES or not rid or "/" in rid:
            return refuse(400, "invalid", "resource must be Observation/<id> or DiagnosticReport/<id>, as the search returned it",
                          who, action, {"refused": "malformed resource reference"})
        # until the id is known to the index, only its type is logged: the rest is caller text
        if body.decision not in ("accept", "retest"):
            return refuse(400, "invalid", "decision must be accept or retest", who, action, {"resource": rtype, "refused": "unknown decision"})
        if (body.reason is not None and body.reason not in catalog.reasons) or (body.decision == "retest" and body.reason is None):
            return refuse(400, "invalid", f"a re-test needs a reason code, and any reason must be one of {', '.join(catalog.reasons)}",
                          who, action, {"resource": rtype, "decision": body.decision, "refused": "reason not a code of reasons.yaml"})
        if not result_exists(index, rtype, rid):
            return refuse(404, "not-found", f"the recognition index holds no {rtype} with this id; decide on a result the search returned",
                          who, action, {"resource": rtype, "decision": body.decision, "refused": "unknown resource"})
        what = {"resource": body.resource, "decision": body.decision}
        with index.begin() as conn:
            conn.execute(decisions.insert().values(at=dt.datetime.now(dt.UTC), institution=who, observation_id=rid,
                                                   decision=body.decision, reason=body.reason))
        access.record(audit, action, "recognition", {**what, "reason": body.reason}, who=who)
        return JSONResponse(status_code=201, media_type=FHIR_JSON, content={"resourceType": "OperationOutcome", "issue": [
            {"severity": "information", "code": "informational", "diagnostics": f"{body.decision} recorded"}]})

    @app.exception_handler(RequestValidationError)
    def malformed(request: Request, exc: RequestValidationError):  # FastAPI's default 422 echoes the input
        action = "recognition-decision" if request.url.path.endswith("recognition-decision") else "recognition-request"
        who = caller(request, action)
        if isinstance(who, JSONResponse):
            return who
        fields = sorted({".".join(str(p) for p in e.get("loc", ())[1:] if isinstance(p, str)) or "body" for e in exc.errors()})
        return refuse(400, "invalid", f"malformed request: check {', '.join(fields)}", who, action,
                      {"path": request.url.path, "refused": "malformed request"})

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
        try:
            access.record(audit, "recognition-request", "recognition", {"path": request.url.path, "error": type(exc).__name__}, "failure", who=ANONYMOUS)
        except Exception:  # noqa: BLE001 - the access log itself failing must not hide the answer
            log.error("could not write the access log")
        return outcome(500, "exception", "internal error")

    return app
