"""The recognition API: tokens, institutions, searchset bundles, decisions, access log, no identifier anywhere."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from hub.demo.generator import canary
from hub.leakscan import load_canaries, scan_text
from hub.lineage import access
from hub.lineage import catalog as runcat
from hub.recognition.api import create_app, issue_token
from hub.recognition.catalog import load_catalog
from hub.recognition.index import build, connect, index_url
from tests.conftest import publish_region

pytestmark = pytest.mark.slow
ID = "urn:oid:2.16.156.10011.1.3"


@pytest.fixture(scope="module")
def served(tmp_path_factory, keys):
    region, _, _ = publish_region(tmp_path_factory.mktemp("recognition"), keys, 20)
    index = connect(index_url(region))
    build(region, index)
    tokens = {inst.id: issue_token(region, inst.id) for inst in region.institutions}
    client = TestClient(create_app(region, keys, index, load_catalog()))
    return region, client, tokens


def _get(client, token, **params):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.get("/fhir/Observation", params={"patient.identifier": f"{ID}|{canary().id_number}", **params}, headers=headers)


def test_no_token_wrong_token_and_another_institutions_id_are_refused(served):
    region, client, tokens = served
    assert _get(client, None).status_code == 401
    bad = _get(client, "not-a-token")
    assert bad.status_code == 401 and bad.json()["resourceType"] == "OperationOutcome"
    other = _get(client, tokens["beishan-chc"], requester="city-first")
    assert other.status_code == 403 and "cannot query as city-first" in other.json()["issue"][0]["diagnostics"]


def test_search_returns_a_bundle_with_verdicts(served):
    region, client, tokens = served
    res = _get(client, tokens["beishan-chc"], requester="beishan-chc")
    assert res.status_code == 200 and res.headers["content-type"].startswith("application/fhir+json")
    bundle = res.json()
    assert bundle["type"] == "searchset" and bundle["total"] == len(bundle["entry"]) > 0
    issuers = set()
    for e in bundle["entry"]:
        tag = e["resource"]["meta"]["tag"][0]
        ext = {x["url"]: x for x in e["resource"]["extension"][0]["extension"]}
        assert tag["system"] == "urn:hub:recognition-verdict" and tag["code"] == ext["verdict"]["valueCode"]
        issuers.add(ext["issuer"]["valueString"])
    assert issuers >= {"city-first", "xihu-second"}
    assert _get(client, tokens["beishan-chc"], date="ge2020-01-01T00:00:00").status_code == 200  # a naive dateTime
    only = _get(client, tokens["beishan-chc"], code="http://loinc.org|4548-4").json()
    assert {e["resource"]["code"]["coding"][0]["code"] for e in only["entry"]} == {"4548-4"}


def test_errors_and_metadata(served):
    region, client, tokens = served
    t = {"Authorization": f"Bearer {tokens['city-first']}"}
    assert client.get("/fhir/Observation", headers=t).status_code == 400
    assert client.get("/fhir/Observation", params={"patient.identifier": "urn:x|1"}, headers=t).status_code == 400
    cap = client.get("/fhir/metadata").json()
    assert cap["resourceType"] == "CapabilityStatement" and cap["fhirVersion"] == "4.0.1"
    assert "/fhir/Observation" in client.get("/openapi.json").json()["paths"]


def test_decisions_are_recorded_and_every_query_is_logged_without_identifiers(served):
    region, client, tokens = served
    t = {"Authorization": f"Bearer {tokens['city-first']}"}
    assert client.post("/fhir/recognition-decision", json={"resource": "Observation/x", "decision": "retest"}, headers=t).status_code == 400
    ok = client.post("/fhir/recognition-decision", json={"resource": "Observation/x", "decision": "retest", "reason": "condition-changed"}, headers=t)
    assert ok.status_code == 201
    log = access.entries(runcat.connect(region.catalog_url))
    actions = [e["action"] for e in log]
    assert "recognition-query" in actions and actions[-1] == "recognition-decision"
    assert any(e["outcome"] == "refused" and e["who"] == "beishan-chc" for e in log)
    text = json.dumps(log, default=str, ensure_ascii=False)
    assert scan_text(text, "access log", load_canaries(region.workspace)) == []


def test_end_to_end_over_http_on_a_local_port(served, keys):
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    region, _, tokens = served
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HUB_MASTER_KEY": keys.master.hex()}
    server = subprocess.Popen([sys.executable, "-m", "hub.cli", "serve", "--workspace", str(region.workspace), "--port", str(port)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=0.5)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        res = httpx.get(f"http://127.0.0.1:{port}/fhir/Observation",
                        params={"patient.identifier": f"{ID}|{canary().id_number}", "requester": "beishan-chc"},
                        headers={"Authorization": f"Bearer {tokens['beishan-chc']}"}, timeout=10)
        assert res.status_code == 200
        entries = res.json()["entry"]
        by_issuer: dict[str, set[str]] = {}
        for e in entries:
            ext = {x["url"]: x for x in e["resource"]["extension"][0]["extension"]}
            by_issuer.setdefault(ext["issuer"]["valueString"], set()).add(ext["verdict"]["valueCode"])
        assert {"city-first", "xihu-second"} <= set(by_issuer)  # results from two other institutions
        assert by_issuer["beishan-chc"] == {"same-institution"}
        assert "eqa-failed" in by_issuer["xihu-second"] or "outside-window" in by_issuer["xihu-second"]
    finally:
        server.terminate()
        output = server.communicate(timeout=10)[0]
    assert "recognition query by beishan-chc" in output
    assert scan_text(output, "server log", load_canaries(region.workspace)) == []
    assert canary().id_number not in output
