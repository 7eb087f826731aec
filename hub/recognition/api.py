"""The recognition FHIR API: a read-only FHIR R4 server for a patient's results with a recognition verdict on each.

``GET /fhir/Observation`` and ``GET /fhir/DiagnosticReport`` with the chained
``patient.identifier=<system>|<value>``, optional ``code=<system>|<code>`` (comma-separated),
``date=ge<date>``, ``requester=<institution id>``, ``at=<evaluation time>`` and ``_count``:
a searchset Bundle (absolute ``fullUrl``, ``total``, ``self`` and ``next`` links; paging by
``_offset`` in the ``next`` link, with the evaluation time pinned) whose entries carry the
verdict in ``meta.tag`` and in an extension. ``GET /fhir/<type>/<id>`` reads an Observation,
DiagnosticReport, Patient (pseudonymised) or Organization, so references in served results
resolve on the same server. ``POST /fhir/$recognition-decision`` (a Parameters resource; the
plain-JSON ``POST /fhir/recognition-decision`` too) records a doctor's accept or re-test
decision on a result the index holds. ``/fhir/metadata`` is the CapabilityStatement; the
SearchParameters and the OperationDefinition it names are served too (``hub.recognition.conformance``).

Least privilege: each institution has its own bearer token and may query only as itself,
only by a valid resident ID number or by an MRN of its own; reads and decisions only for
persons it has searched for (``hub.recognition.served``). Anything else is refused with an
OperationOutcome (400, 401, 403, 404, 405, 429); no error is FastAPI's ``{"detail": ...}``
and none repeats caller input. Tokens are read from the token file whenever it changes, so
issuing and revoking take effect on a running server. Every query, read, decision and
refusal goes to the access log; the patient identifier is turned into a pseudonym and
never stored or logged (the server runs without uvicorn's access log, which would print
query strings, and request validation errors are answered without echoing the input).
A Bundle's ``self`` and ``next`` links repeat the search as processed, as FHIR requires,
so they hold the identifier the caller sent: it goes back to that caller only.

Limits (``hub.recognition.limits``, configured in region.yaml): each token's lookups are
rate-limited (429 throttled with Retry-After), and lookups by resident ID number that find
no patient draw on a much smaller miss budget; exceeding it suspends the token and writes a
``recognition-alert`` entry to the access log. A miss answers exactly as a known person with
nothing to show does: the same empty Bundle, after the same queries and writes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlencode

import sqlalchemy as sa
import yaml
from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from deid.keys import Keyring
from hub.lineage import access, runrecord
from hub.recognition.conformance import (
    DEFAULT_COUNT,
    MAX_COUNT,
    SEARCHED,
    capability_statement,
    operation_definition,
    search_parameter,
)
from hub.recognition.index import decisions
from hub.recognition.limits import Limiter, Refusal, load_limits
from hub.recognition.query import (
    ID_CARD_SYSTEMS,
    RESOURCE_TYPES,
    VERDICTS,
    IdentifierRefused,
    Verdict,
    indexed_result,
    known_patient,
    mrn_system,
    patient_for,
    query,
    verdict_for,
)
from hub.recognition.rules import RecognitionRules
from hub.recognition.served import READABLE, Served
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


def outcome(status: int, code: str, text: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An OperationOutcome answer; ``text`` never holds caller input (it may be an identifier)."""
    return JSONResponse(status_code=status, media_type=FHIR_JSON, headers=headers, content={
        "resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": text}]})


class Decision(BaseModel):
    resource: str  # the fullUrl the search returned, or Observation/<id> or DiagnosticReport/<id>
    decision: str  # accept | retest
    reason: str | None = None  # a code from recognition-rules/reasons.yaml, required for retest


def _bearer(request: Request) -> str:
    return request.headers.get("authorization", "")[7:].strip()


class BadParameter(ValueError):
    """A search or read parameter that cannot be used; the message names the parameter, never its value."""


def _int_param(params, name: str, default: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise BadParameter(f"{name} must be a whole number of at least 0")
    return int(raw)


def _evaluation_time(params, clock: Callable[[], float]) -> dt.datetime:
    """``at`` (or ``_at``): an ISO date (midnight UTC) or dateTime (UTC without an offset); default now, to the second."""
    raw = params.get("at") or params.get("_at")
    if not raw:
        return dt.datetime.fromtimestamp(int(clock()), dt.UTC)
    try:
        at = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise BadParameter("at must be an ISO date or dateTime, e.g. at=2025-06-01 or at=2025-06-01T08:00:00+08:00") from None
    return (at if at.tzinfo else at.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)


def _instant(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S") + (f".{at.microsecond:06d}" if at.microsecond else "") + "Z"


def annotated(v: Verdict) -> dict:
    """A served result with its verdict in ``meta.tag`` and in the recognition extension."""
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
    return resource


SEARCH_PARAMS = ("patient.identifier", "code", "date", "requester", "at", "_at", "_count", "_offset", "_format")
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def create_app(region: Region, keys: Keyring, index: sa.Engine, rules: RecognitionRules, tokens: dict[str, str] | None = None,
               clock: Callable[[], float] = time.time, base_url: str | None = None) -> FastAPI:
    """The API over an index. Without ``tokens``, the region's token file is followed live.

    The limits are region.yaml's ``recognition_limits``; their state is kept in the index
    database and written through on shutdown. ``clock`` (epoch seconds) is for tests; it is
    also "now" for verdicts when a request gives no ``at``. ``base_url`` is the public base
    of the FHIR endpoint (e.g. ``https://hub.example/fhir`` behind a proxy); by default it
    is taken from each request (``<scheme>://<host>/fhir``).
    """
    limiter = Limiter(load_limits(region), index, clock)
    served = Served(region, keys, index)

    # every request waits for its access-log entry's commit; one thread commits the waiting entries together
    audit_log = access.AccessLogWriter(runrecord.connect(region.catalog_url))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        audit_log.start()
        try:
            yield
        finally:
            try:
                limiter.flush()
            finally:
                audit_log.close()

    app = FastAPI(title="hub recognition API", version="1", description=__doc__, lifespan=lifespan)
    app.state.limiter = limiter
    app.state.access_log = audit_log
    store = TokenStore(token_file(region)) if tokens is None else None

    def fhir_base(request: Request) -> str:
        return base_url.rstrip("/") if base_url else str(request.base_url).rstrip("/") + "/fhir"

    def refuse(status: int, code: str, text: str, who: str, action: str, what: dict) -> JSONResponse:
        """Answer with an OperationOutcome and write the refusal to the access log (never an identifier)."""
        audit_log.record(action, "recognition", {**what, "status": status}, "refused", who=who)
        log.info("recognition %s refused (%s) for %s", action.removeprefix("recognition-"), status, who)
        return outcome(status, code, text, {"WWW-Authenticate": "Bearer"} if status == 401 else None)

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
            return refuse(403, "forbidden", f"this token belongs to {who}; it cannot query as {requester if requester in institutions else 'another institution'}", who, action,
                          {**what, "refused": "another institution's id"})
        if "handling=strict" in request.headers.get("prefer", "").replace(" ", "") and any(k not in SEARCH_PARAMS for k in params):
            return refuse(400, "not-supported", "the search has a parameter this server does not support (Prefer: handling=strict); "
                          "the supported ones are in the CapabilityStatement at /fhir/metadata", who, action,
                          {**what, "refused": "unsupported parameter"})
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
            count = min(_int_param(params, "_count", DEFAULT_COUNT), MAX_COUNT)
            offset = _int_param(params, "_offset", 0)
            at = _evaluation_time(params, clock)
        except BadParameter as exc:
            return refuse(400, "invalid", str(exc), who, action, {**what, "refused": "paging or evaluation time parameter"})
        try:
            patient = patient_for(index, keys, system, value, requester=who)
        except IdentifierRefused as exc:
            shown = system if system in loggable_systems else "(other)"
            return refuse(exc.status, exc.code, str(exc), who, action, {**what, "system": shown, "refused": exc.cause})
        by_id = system in ID_CARD_SYSTEMS
        # the same queries and writes for every lookup, known person or not: a miss must not answer faster
        known = known_patient(index, patient or "")
        verdicts = query(index, rules, patient or "", requester, codes, at=at, since=since, resource_type=resource_type)
        served.grant(who, patient or "", clock(), limiter.policy.of(who).read_hours * 3600)
        if by_id and not known:
            until = limiter.miss(bearer, who)
            if until is not None:
                limits = limiter.policy.of(who)
                audit_log.record("recognition-alert", "recognition", {
                    "alert": "miss budget exceeded: lookups by resident ID number that found no patient (possible enumeration)",
                    "misses_per_hour": limits.misses_per_hour, "suspended_minutes": limits.suspend_minutes,
                    "suspended_until": dt.datetime.fromtimestamp(until, dt.UTC).isoformat(timespec="seconds"),
                    "lift": f"hub recognition token {who}"}, "refused", who=who)
                log.warning("recognition: token of %s suspended until %s after too many lookups that found no patient",
                            who, dt.datetime.fromtimestamp(until, dt.UTC).isoformat(timespec="seconds"))
        base = fhir_base(request)
        page = verdicts[offset:offset + count]
        entries = [{"fullUrl": f"{base}/{resource_type}/{v.observation['id']}", "resource": annotated(v), "search": {"mode": "match"}}
                   for v in page]
        # the search as processed (FHIR: the self link carries the parameters used), the evaluation time pinned
        used = [("patient.identifier", ident)] + [(k, params[k]) for k in ("code", "date") if params.get(k)]
        used += [("requester", requester), ("at", _instant(at)), ("_count", str(count))]
        links = [{"relation": "self", "url": f"{base}/{resource_type}?{urlencode(used + ([('_offset', str(offset))] if offset else []))}"}]
        if count and offset + count < len(verdicts):
            links.append({"relation": "next", "url": f"{base}/{resource_type}?{urlencode(used + [('_offset', str(offset + count))])}"})
        counts: dict[str, int] = {}
        for v in verdicts:
            counts[v.code] = counts.get(v.code, 0) + 1
        found = {"patient_known": known} if by_id else {}
        paging = {"offset": offset, "count": count} if offset or "_count" in params else {}
        asked_at = {"at": _instant(at)} if params.get("at") or params.get("_at") else {}
        audit_log.record(action, "recognition", {**what, **found, **paging, **asked_at, "codes": codes, "results": len(verdicts),
                                                 "verdicts": counts}, who=who)
        log.info("recognition query by %s: %s results", who, len(verdicts))
        bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(verdicts), "link": links}
        if entries:  # FHIR JSON has no empty arrays
            bundle["entry"] = entries
        return JSONResponse(media_type=FHIR_JSON, content=bundle)

    @app.get("/fhir/metadata", summary="CapabilityStatement")
    def metadata(request: Request):
        description = f"hub recognition API ({rules.mark} {rules.scope}); verdicts: {', '.join(VERDICTS)}"
        return JSONResponse(media_type=FHIR_JSON, content=capability_statement(fhir_base(request), description))

    @app.get("/fhir/SearchParameter/{sp_id}", summary="A search parameter this server declares")
    def search_parameter_read(request: Request, sp_id: str):
        found = search_parameter(fhir_base(request), sp_id)
        return JSONResponse(media_type=FHIR_JSON, content=found) if found else outcome(404, "not-found", "no SearchParameter with this id")

    @app.get("/fhir/OperationDefinition/{op_id}", summary="An operation this server declares")
    def operation_definition_read(request: Request, op_id: str):
        found = operation_definition(fhir_base(request), op_id)
        return JSONResponse(media_type=FHIR_JSON, content=found) if found else outcome(404, "not-found", "no OperationDefinition with this id")

    @app.get("/fhir/Observation", summary="Search a patient's lab results with recognition verdicts")
    def observations(request: Request):
        return search(request, "Observation")

    @app.get("/fhir/DiagnosticReport", summary="Search a patient's reports with recognition verdicts")
    def reports(request: Request):
        return search(request, "DiagnosticReport")

    @app.get("/fhir/{resource_type}/{rid}", summary="Read an Observation, DiagnosticReport, Patient or Organization")
    def read(request: Request, resource_type: str, rid: str):
        action = "recognition-read"
        if resource_type not in READABLE:
            return unknown_endpoint(request)
        who = caller(request, action)
        if isinstance(who, JSONResponse):
            return who
        suspended = limiter.admit(token_hash(_bearer(request)), who, take=False)
        if suspended is not None:
            return throttle(suspended, who, action, {"resource": resource_type, "refused": suspended.cause})
        try:
            at = _evaluation_time(request.query_params, clock)
        except BadParameter as exc:
            return refuse(400, "invalid", str(exc), who, action, {"resource": resource_type, "refused": "evaluation time"})
        found = served.find(resource_type, rid) if FHIR_ID.fullmatch(rid) else None
        if found is None or not (resource_type == "Organization" or served.granted(who, found.patient, clock())):
            # one answer for "no such id" and "not yours", and only the type in the log: the id is caller text
            hours = limiter.policy.of(who).read_hours
            return refuse(404, "not-found", f"no {resource_type} with this id that this token may read (results and patients "
                          f"are served for persons this institution searched for in the last {hours:g} hours)", who, action,
                          {"resource": resource_type, "refused": "unknown id, or no search for the person"})
        resource = found.resource
        if resource_type in SEARCHED:
            resource = annotated(verdict_for(rules, who, resource, found.loinc or "", found.institution, found.status,
                                             found.when if found.when is None or found.when.tzinfo else found.when.replace(tzinfo=dt.UTC), at))
        audit_log.record(action, "recognition", {"resource": f"{resource_type}/{rid}"}, who=who)
        return JSONResponse(media_type=FHIR_JSON, content=resource)

    def record_decision(request: Request, who: str, reference: str, decision: str, reason: str | None,
                        at: dt.datetime | None = None) -> JSONResponse | Verdict:
        """Check and record one decision; the verdict of the result at ``at`` (default now), or the refusal."""
        action = "recognition-decision"
        suspended = limiter.admit(token_hash(_bearer(request)), who, take=False)
        if suspended is not None:
            return throttle(suspended, who, action, {"refused": suspended.cause})
        base = fhir_base(request) + "/"
        ref = reference[len(base):] if reference.startswith(base) else reference
        rtype, _, rid = ref.partition("/")
        if rtype not in RESOURCE_TYPES or not rid or "/" in rid:
            return refuse(400, "invalid", "resource must be the fullUrl the search returned, or Observation/<id> or DiagnosticReport/<id>",
                          who, action, {"refused": "malformed resource reference"})
        # until the id is known to the index, only its type is logged: the rest is caller text
        if decision not in ("accept", "retest"):
            return refuse(400, "invalid", "decision must be accept or retest", who, action, {"resource": rtype, "refused": "unknown decision"})
        if (reason is not None and reason not in rules.reasons) or (decision == "retest" and reason is None):
            return refuse(400, "invalid", f"a re-test needs a reason code, and any reason must be one of {', '.join(rules.reasons)}",
                          who, action, {"resource": rtype, "decision": decision, "refused": "reason not a code of reasons.yaml"})
        row = indexed_result(index, rtype, rid)
        if row is None or not served.granted(who, row.patient, clock()):
            return refuse(404, "not-found", f"the recognition index holds no {rtype} with this id that this token has searched for; "
                          "decide on a result a recent search returned", who, action,
                          {"resource": rtype, "decision": decision, "refused": "unknown resource"})
        with index.begin() as conn:
            conn.execute(decisions.insert().values(at=dt.datetime.now(dt.UTC), institution=who, observation_id=rid,
                                                   decision=decision, reason=reason))
        at = at or dt.datetime.fromtimestamp(int(clock()), dt.UTC)
        when = row.effective_time if row.effective_time is None or row.effective_time.tzinfo else row.effective_time.replace(tzinfo=dt.UTC)
        verdict = verdict_for(rules, who, json.loads(row.resource), row.loinc, row.institution, row.status, when, at)
        audit_log.record(action, "recognition", {"resource": f"{rtype}/{rid}", "decision": decision, "reason": reason,
                                                 "verdict": verdict.code}, who=who)
        return verdict

    @app.post("/fhir/$recognition-decision", summary="The recognition-decision operation (a FHIR Parameters resource in and out)")
    def decide_operation(request: Request, body: dict = Body(...)):
        action = "recognition-decision"
        who = caller(request, action)
        if isinstance(who, JSONResponse):
            return who
        values: dict[str, str] = {}
        for p in body.get("parameter") or [] if body.get("resourceType") == "Parameters" else []:
            if isinstance(p, dict) and p.get("name") in ("resource", "decision", "reason", "at"):
                v = next((p[k] for k in ("valueReference", "valueString", "valueUri", "valueCode", "valueDateTime", "valueDate")
                          if k in p), None)
                values[p["name"]] = v.get("reference") if isinstance(v, dict) else v
        if not all(isinstance(values.get(k), str) for k in ("resource", "decision")) or any(
                not isinstance(v, str) for v in values.values()):
            return refuse(400, "invalid", "the body must be a FHIR Parameters resource with resource (valueReference), decision "
                          "(valueCode) and, for a re-test, reason (valueCode); see /fhir/OperationDefinition/recognition-decision",
                          who, action, {"refused": "malformed Parameters"})
        try:
            at = _evaluation_time({"at": values["at"]}, clock) if values.get("at") else None
        except BadParameter as exc:
            return refuse(400, "invalid", str(exc), who, action, {"refused": "evaluation time"})
        result = record_decision(request, who, values["resource"], values["decision"], values.get("reason"), at)
        if isinstance(result, JSONResponse):
            return result
        out = [{"name": "decision", "valueCode": values["decision"]}]
        if values.get("reason"):
            out.append({"name": "reason", "valueCode": values["reason"]})
        out += [{"name": "verdict", "valueCode": result.code},
                {"name": "at", "valueDateTime": _instant(at or dt.datetime.fromtimestamp(int(clock()), dt.UTC))}]
        return JSONResponse(media_type=FHIR_JSON, content={"resourceType": "Parameters", "parameter": out})

    @app.post("/fhir/recognition-decision", summary="Record a doctor's accept or re-test decision (plain JSON; see $recognition-decision)")
    def decide(request: Request, body: Decision):
        who = caller(request, "recognition-decision")
        if isinstance(who, JSONResponse):
            return who
        result = record_decision(request, who, body.resource, body.decision, body.reason)
        if isinstance(result, JSONResponse):
            return result
        return JSONResponse(status_code=201, media_type=FHIR_JSON, content={"resourceType": "OperationOutcome", "issue": [
            {"severity": "information", "code": "informational", "diagnostics": f"{body.decision} recorded"}]})

    def unknown_endpoint(request: Request, status: int = 404) -> JSONResponse:
        """404 (no such endpoint) or 405 (method), logged with the caller but not the path (it may hold an identifier)."""
        audit_log.record("recognition-request", "recognition", {"status": status,
                         "method": request.method if request.method in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS") else "(other)",
                         "refused": "unknown endpoint" if status == 404 else "method not allowed"}, "refused",
                         who=token_owner(request) or ANONYMOUS)
        if status == 405:
            return outcome(405, "not-supported", "this server is read-only: GET for reads and searches, POST only for "
                           "$recognition-decision (see /fhir/metadata)")
        return outcome(404, "not-found", "no such endpoint: this server reads Observation, DiagnosticReport, Patient and "
                       "Organization, searches Observation and DiagnosticReport, and has the $recognition-decision operation "
                       "(see /fhir/metadata)")

    @app.exception_handler(StarletteHTTPException)
    def http_error(request: Request, exc: StarletteHTTPException):  # never FastAPI's {"detail": ...}, never the path
        if exc.status_code in (404, 405):
            return unknown_endpoint(request, exc.status_code)
        return outcome(exc.status_code, "processing", "the request could not be processed")

    @app.exception_handler(RequestValidationError)
    def malformed(request: Request, exc: RequestValidationError):  # FastAPI's default 422 echoes the input
        action = "recognition-decision" if request.url.path.endswith("recognition-decision") else "recognition-request"
        who = caller(request, action)
        if isinstance(who, JSONResponse):
            return who
        fields = sorted({".".join(str(p) for p in e.get("loc", ())[1:] if isinstance(p, str)) or "body" for e in exc.errors()})
        return refuse(400, "invalid", f"malformed request: check {', '.join(fields)}", who, action,
                      {"path": request.url.path if request.url.path.endswith("recognition-decision") else "(other)",
                       "refused": "malformed request"})

    @app.exception_handler(Exception)
    def failure(request: Request, exc: Exception):  # never echo the request (it holds an identifier)
        # an AccessLogError names the database's complaint, never the request; other errors only by type
        log.error("recognition API error: %s", exc if isinstance(exc, access.AccessLogError) else type(exc).__name__)
        try:
            route = getattr(request.scope.get("route"), "path", "(no route)")  # the template: a path may hold an identifier
            audit_log.record("recognition-request", "recognition", {"path": route, "error": type(exc).__name__}, "failure", who=ANONYMOUS)
        except Exception:  # noqa: BLE001 - the access log itself failing must not hide the answer
            log.error("could not write the access log")
        return outcome(500, "exception", "internal error")

    return app
