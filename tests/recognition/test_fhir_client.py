"""The recognition API as a FHIR R4 server, tried with a real FHIR client (fhirpy) over HTTP.

A real uvicorn server on 127.0.0.1:<ephemeral port>, in a thread: the client searches
(chained ``patient.identifier``), pages through ``next`` links, reads by id, resolves the
``subject`` and ``performer`` references of served results on the same server, calls the
``$recognition-decision`` operation, and meets every error as an OperationOutcome. The
CapabilityStatement, its SearchParameters and the OperationDefinition are validated with
fhir.resources (R4B).
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import time

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationdefinition import OperationDefinition
from fhir.resources.R4B.searchparameter import SearchParameter
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import (
    AuthorizationError,
    ForbiddenError,
    OperationOutcome,
    ResourceNotFound,
)
from fhirpy.base.searchset import Raw

from hub.demo.generator import canary
from hub.leakscan import load_canaries, scan_text
from hub.lineage import access, runrecord
from hub.recognition.api import create_app, issue_token, revoke_token
from hub.recognition.index import build, connect, decisions, index_url
from hub.recognition.rules import load_rules
from hub.region import load_region
from tests.conftest import publish_region

pytestmark = pytest.mark.slow
ID = "urn:oid:2.16.156.10011.1.3"
# R4 value sets (search-param-type, type-restful-interaction, system-restful-interaction)
PARAM_TYPES = {"number", "date", "string", "token", "reference", "composite", "quantity", "uri", "special"}
INTERACTIONS = {"read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, keys):
    """A published 20-person region, its index, a token per institution, and `hub serve`'s app on a local port."""
    region, _, _ = publish_region(tmp_path_factory.mktemp("fhirapi"), keys, 20)
    with (region.workspace / "region.yaml").open("a", encoding="utf-8") as fh:  # xihu-second is the one throttled
        fh.write("recognition_limits: {lookups_per_minute: 6000, burst: 1000, misses_per_hour: 1000, "
                 "institutions: {xihu-second: {lookups_per_minute: 1, burst: 2}}}\n")
    region = load_region(region.workspace)
    index = connect(index_url(region))
    build(region, index)
    tokens = {inst.id: issue_token(region, inst.id) for inst in region.institutions}
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(region, keys, index, load_rules()), access_log=False, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}/fhir"
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    yield region, base, tokens, index
    srv.should_exit = True
    thread.join(timeout=10)
    sock.close()


def client(base: str, token: str | None) -> SyncFHIRClient:
    return SyncFHIRClient(base, authorization=f"Bearer {token}" if token else None)


def canary_search(fhir: SyncFHIRClient, resource: str = "Observation", **params):
    return fhir.resources(resource).search(Raw(**{"patient.identifier": f"{ID}|{canary().id_number}", **params}))


def _log(region) -> list[dict]:
    return access.entries(runrecord.connect(region.catalog_url))


def test_the_capability_statement_validates_and_declares_what_is_served(server):
    region, base, tokens, _ = server
    fhir = client(base, None)  # metadata and definitions need no token
    cap = fhir.execute("metadata", method="get")
    CapabilityStatement.model_validate(cap)
    assert cap["fhirVersion"] == "4.0.1" and cap["kind"] == "instance" and cap["implementation"]["url"] == base
    rest = cap["rest"][0]
    resources = {r["type"]: r for r in rest["resource"]}
    assert {"Observation", "DiagnosticReport", "Patient", "Organization"} <= set(resources)
    for r in resources.values():
        assert {i["code"] for i in r["interaction"]} <= INTERACTIONS and "read" in {i["code"] for i in r["interaction"]}
    for t in ("Observation", "DiagnosticReport"):
        assert "search-type" in {i["code"] for i in resources[t]["interaction"]}
        params = {p["name"]: p for p in resources[t]["searchParam"]}
        assert set(params) == {"patient", "code", "date", "requester", "at"}  # a chain is not a parameter name
        assert all("." not in name for name in params) and {p["type"] for p in params.values()} <= PARAM_TYPES
        patient = params["patient"]
        assert patient["type"] == "reference"
        definition = fhir.execute(patient["definition"].removeprefix(base + "/"), method="get")  # resolves on the server
        SearchParameter.model_validate(definition)
        assert definition["chain"] == ["identifier"] and definition["target"] == ["Patient"] and t in definition["base"]
        for name in ("requester", "at"):
            SearchParameter.model_validate(fhir.execute(params[name]["definition"].removeprefix(base + "/"), method="get"))
    (op,) = rest["operation"]
    assert op["name"] == "recognition-decision"
    opdef = fhir.execute(op["definition"].removeprefix(base + "/"), method="get")
    OperationDefinition.model_validate(opdef)
    assert opdef["url"] == op["definition"] and opdef["code"] == "recognition-decision" and opdef["system"] is True
    assert {p["name"] for p in opdef["parameter"] if p["use"] == "in"} == {"resource", "decision", "reason", "at"}


def test_fhirpy_searches_and_pages_through_next_links(server):
    region, base, tokens, _ = server
    fhir = client(base, tokens["beishan-chc"])
    everything = canary_search(fhir).fetch_raw()  # one page of up to 100
    total = everything["total"]
    assert total > 10 and len(everything["entry"]) == total
    Bundle.model_validate(everything)
    start = len(_log(region))

    first = canary_search(fhir).limit(5).fetch_raw()
    assert first["total"] == total and len(first["entry"]) == 5  # _count honoured
    links = {link["relation"]: link["url"] for link in first["link"]}
    assert links["self"].startswith(f"{base}/Observation?") and "_count=5" in links["self"]
    assert links["next"].startswith(f"{base}/Observation?") and "_offset=5" in links["next"] and "at=" in links["next"]
    assert all(e["fullUrl"] == f"{base}/Observation/{e['resource']['id']}" for e in first["entry"])  # absolute

    paged = canary_search(fhir).limit(5).fetch_all()  # fhirpy follows the next links
    assert [r["id"] for r in paged] == [e["resource"]["id"] for e in everything["entry"]]  # same order, none twice, none lost
    pages = -(-total // 5)
    queries = [e for e in _log(region)[start:] if e["action"] == "recognition-query"]
    assert len(queries) == 1 + pages  # every page is a query in the access log
    assert all(e["who"] == "beishan-chc" and e["what"]["count"] == 5 for e in queries)

    none = canary_search(fhir).limit(0).fetch_raw()  # _count=0: the total only
    assert none["total"] == total and "entry" not in none and [link["relation"] for link in none["link"]] == ["self"]
    reports = canary_search(fhir, "DiagnosticReport").limit(2).fetch_all()
    assert reports and {r["resourceType"] for r in reports} == {"DiagnosticReport"}


def test_references_in_served_results_resolve_on_the_same_server(server):
    region, base, tokens, _ = server
    fhir = client(base, tokens["beishan-chc"])
    results = canary_search(fhir).limit(50).fetch()
    seen = set()
    for obs in results[:8]:
        patient = obs["subject"].to_resource()  # fhirpy's reference resolution: Patient/<id> on this server
        assert patient["resourceType"] == "Patient" and patient["id"] == obs["subject"]["reference"].split("/")[1]
        assert not any(i["system"].startswith("urn:hub:pseudonym:") for i in patient.get("identifier", []))
        for performer in obs["performer"]:
            org = performer.to_resource()
            assert org["resourceType"] == "Organization" and org["name"]
            seen.add(org["id"])
        again = fhir.reference("Observation", obs["id"]).to_resource()  # read
        assert again["id"] == obs["id"] and again["meta"]["tag"][0]["system"] == "urn:hub:recognition-verdict"
        assert again["meta"]["tag"][0]["code"] == obs["meta"]["tag"][0]["code"]
    assert len(seen) >= 2  # results of more than one institution
    report = canary_search(fhir, "DiagnosticReport").limit(1).fetch()[0]
    assert report["subject"].to_resource()["resourceType"] == "Patient"
    text = json.dumps(_log(region), default=str, ensure_ascii=False)
    assert "recognition-read" in text and scan_text(text, "access log", load_canaries(region.workspace)) == []


def test_reads_are_scoped_to_persons_the_institution_searched_for(server):
    region, base, tokens, _ = server
    reader = client(base, tokens["beishan-chc"])
    obs = canary_search(reader).limit(1).fetch()[0]
    patient_ref, org_ref = obs["subject"]["reference"], obs["performer"][0]["reference"]
    other = client(base, tokens["city-first"])  # has not searched for the canary
    for ref in (f"Observation/{obs['id']}", patient_ref):
        with pytest.raises(ResourceNotFound) as exc:
            other.execute(ref, method="get")
        with pytest.raises(ResourceNotFound) as missing:
            other.execute(ref.split("/")[0] + "/0123456789abcdef0123456789abcdef", method="get")
        assert json.loads(str(exc.value)) == json.loads(str(missing.value))  # "not yours" answers as "no such id"
        assert json.loads(str(exc.value))["resourceType"] == "OperationOutcome"
    assert other.execute(org_ref, method="get")["resourceType"] == "Organization"  # institutions: any valid token
    assert canary_search(other).limit(1).fetch_raw()["total"] > 0  # a search grants the reads
    assert other.execute(patient_ref, method="get")["resourceType"] == "Patient"
    with pytest.raises(AuthorizationError):
        client(base, None).execute(patient_ref, method="get")
    refused = [e for e in _log(region) if e["action"] == "recognition-read" and e["outcome"] == "refused"]
    assert refused and all(e["what"]["status"] in (401, 404) and "/" not in e["what"].get("resource", "") for e in refused)


def test_the_evaluation_time_makes_a_verdict_reproducible(server):
    region, base, tokens, _ = server
    fhir = client(base, tokens["beishan-chc"])
    results = canary_search(fhir).fetch()

    def verdict(r) -> str:
        return r["meta"]["tag"][0]["code"]

    judged = [r for r in results if verdict(r) in ("recognisable", "outside-window")]  # listed, final, EQA passed
    assert judged
    r = judged[0]
    when = dt.datetime.fromisoformat(r["effectiveDateTime"])
    at = (when + dt.timedelta(days=1)).isoformat()
    (same,) = [x for x in canary_search(fhir, at=at).fetch_all() if x["id"] == r["id"]]
    ext = {e["url"]: e for e in same["extension"][0]["extension"]}
    assert verdict(same) == "recognisable" and ext["ageDays"]["valueInteger"] == 1 and ext["mark"]["valueString"]
    assert fhir.execute(f"Observation/{r['id']}", method="get", params={"at": at})["meta"]["tag"][0]["code"] == "recognisable"
    assert canary_search(fhir, at="2001-01-01").fetch_raw()["total"] == 0  # nothing had happened yet
    later = (when + dt.timedelta(days=10 * 365)).date().isoformat()
    (old,) = [x for x in canary_search(fhir, at=later).fetch_all() if x["id"] == r["id"]]
    assert verdict(old) == "outside-window"


def test_the_decision_operation(server):
    region, base, tokens, index = server
    fhir = client(base, tokens["beishan-chc"])
    result = next(r for r in canary_search(fhir).fetch() if r["meta"]["tag"][0]["code"] != "same-institution")
    with index.connect() as conn:
        before = conn.execute(sa.select(sa.func.count()).select_from(decisions)).scalar_one()

    def params(**values):
        kinds = {"resource": "valueReference", "decision": "valueCode", "reason": "valueCode", "at": "valueDateTime"}
        return {"resourceType": "Parameters", "parameter": [
            {"name": k, kinds[k]: {"reference": v} if k == "resource" else v} for k, v in values.items()]}

    out = fhir.execute("$recognition-decision", data=params(resource=f"{base}/Observation/{result['id']}", decision="retest",
                                                             reason="condition-changed"))
    got = {p["name"]: p for p in out["parameter"]}
    assert out["resourceType"] == "Parameters" and got["decision"]["valueCode"] == "retest"
    assert got["verdict"]["valueCode"] == result["meta"]["tag"][0]["code"]
    at = (dt.datetime.fromisoformat(result["effectiveDateTime"]) + dt.timedelta(days=1)).isoformat()
    replay = fhir.execute("$recognition-decision", data=params(resource=f"Observation/{result['id']}", decision="accept", at=at))
    assert {p["name"]: p for p in replay["parameter"]}["verdict"]["valueCode"] in ("recognisable", "eqa-failed", "eqa-unknown", "not-final")
    with pytest.raises(OperationOutcome) as bad:
        fhir.execute("$recognition-decision", data=params(resource=f"Observation/{result['id']}", decision="retest"))
    assert bad.value.resource["issue"][0]["code"] == "invalid"
    with pytest.raises(ResourceNotFound):  # xihu-second has not searched for this person (it does in a later test)
        client(base, tokens["xihu-second"]).execute("$recognition-decision", data=params(
            resource=f"Observation/{result['id']}", decision="accept"))
    with index.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(decisions)).scalar_one() == before + 2


def test_every_error_is_an_operation_outcome_without_the_identifier(server):
    region, base, tokens, _ = server
    number = canary().id_number
    bad_number = number[:17] + ("0" if number[17] != "0" else "1")
    fhir = client(base, tokens["beishan-chc"])
    failures = []
    with pytest.raises(AuthorizationError) as e401:
        canary_search(client(base, None)).fetch()
    failures.append(str(e401.value))
    with pytest.raises(ForbiddenError) as e403:
        canary_search(fhir, requester="city-first").fetch()
    failures.append(str(e403.value))
    with pytest.raises(ForbiddenError) as typed:  # whatever is typed as the requester is not repeated
        canary_search(fhir, requester=number).fetch()
    failures.append(str(typed.value))
    with pytest.raises(ResourceNotFound) as e404:
        fhir.execute(f"Observation/{number}", method="get")
    failures.append(str(e404.value))
    for params in ({"patient.identifier": f"{ID}|{bad_number}"}, {"patient.identifier": f"{ID}|{number}", "_count": "many"},
                   {"patient.identifier": f"{ID}|{number}", "at": "yesterday"}, {"patient.identifier": f"urn:oid:{number}|x"}, {}):
        with pytest.raises(OperationOutcome) as e400:
            fhir.resources("Observation").search(Raw(**params)).fetch()
        assert e400.value.resource["issue"][0]["code"] in ("invalid", "required", "not-supported")
        failures.append(json.dumps(e400.value.resource))
    raw = httpx.Client(headers={"Authorization": f"Bearer {tokens['beishan-chc']}"}, timeout=10)
    answers = [raw.get(f"{base}/Encounter/{number}"), raw.get(f"{base}/Patient", params={"identifier": number}),
               raw.delete(f"{base}/Observation/{number}"), raw.post(f"{base}/recognition-decision", content=b"{" + number.encode()),
               raw.get(f"{base}/Observation/{number}/_history")]
    assert [a.status_code for a in answers] == [404, 404, 405, 400, 404]
    unknown = {"patient.identifier": f"{ID}|{number}", "name": "x"}  # a parameter the server does not support
    lenient = raw.get(f"{base}/Observation", params=unknown)
    assert lenient.status_code == 200 and "name=" not in lenient.json()["link"][0]["url"]  # ignored, and the self link says so
    strict = raw.get(f"{base}/Observation", params=unknown, headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400 and strict.json()["issue"][0]["code"] == "not-supported"
    answers.append(strict)
    throttled = httpx.Client(headers={"Authorization": f"Bearer {tokens['xihu-second']}"}, timeout=10)
    burst = [throttled.get(f"{base}/Observation", params={"patient.identifier": f"{ID}|{number}"}) for _ in range(3)]
    assert [b.status_code for b in burst] == [200, 200, 429] and int(burst[2].headers["Retry-After"]) >= 1
    answers.append(burst[2])
    for a in answers:
        assert a.headers["content-type"].startswith("application/fhir+json")
        failures.append(a.text)
    for text in failures:
        body = json.loads(text)
        assert body["resourceType"] == "OperationOutcome" and "detail" not in body
        assert body["issue"][0]["severity"] == "error" and body["issue"][0]["diagnostics"]
        assert number not in text and bad_number not in text
    log = _log(region)
    endpoints = [e for e in log if e["action"] == "recognition-request" and e["outcome"] == "refused"]
    assert {(e["who"], e["what"]["status"]) for e in endpoints} >= {("beishan-chc", 404), ("beishan-chc", 405)}
    assert access.check(runrecord.connect(region.catalog_url), []).breaks == []  # the chain still verifies
    assert number not in json.dumps(log, default=str) and bad_number not in json.dumps(log, default=str)


def test_revoked_tokens_and_the_public_base_url(server, keys):
    from fastapi.testclient import TestClient

    region, base, tokens, index = server
    token = issue_token(region, "beishan-chc")  # replaces the module's token: that one stops working
    with pytest.raises(AuthorizationError):
        canary_search(client(base, tokens["beishan-chc"])).fetch()
    assert revoke_token(region, "beishan-chc")
    with pytest.raises(AuthorizationError):
        canary_search(client(base, token)).fetch()
    tokens["beishan-chc"] = issue_token(region, "beishan-chc")

    proxied = TestClient(create_app(region, keys, index, load_rules(), base_url="https://hub.example/fhir"))
    res = proxied.get("/fhir/Observation", params={"patient.identifier": f"{ID}|{canary().id_number}", "_count": 2},
                      headers={"Authorization": f"Bearer {tokens['beishan-chc']}"})
    bundle = res.json()
    assert all(e["fullUrl"].startswith("https://hub.example/fhir/Observation/") for e in bundle["entry"])
    assert {link["relation"]: link["url"] for link in bundle["link"]}["next"].startswith("https://hub.example/fhir/Observation?")
    assert proxied.get("/fhir/metadata").json()["rest"][0]["operation"][0]["definition"].startswith("https://hub.example/fhir/")
