"""The recognition API: tokens, institutions, searchset bundles, decisions, access log, no identifier anywhere.

Least privilege is tried as an adversary would: another institution's (enumerable) MRNs,
malformed resident ID numbers, decisions on results that do not exist, malformed bodies,
tokens revoked or issued while the server runs; each refusal must be in the access log
without the identifier that was tried.
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from hub.demo.generator import canary
from hub.leakscan import load_canaries, scan_text
from hub.lineage import access, runrecord
from hub.recognition.api import create_app, issue_token, revoke_token
from hub.recognition.index import build, connect, index_url
from hub.recognition.rules import load_rules
from hub.region import load_region
from tests.conftest import publish_region

pytestmark = pytest.mark.slow
ID = "urn:oid:2.16.156.10011.1.3"


@pytest.fixture(scope="module")
def served(tmp_path_factory, keys):
    region, _, _ = publish_region(tmp_path_factory.mktemp("recognition"), keys, 20)
    with (region.workspace / "region.yaml").open("a", encoding="utf-8") as fh:  # limits are tried in test_limits.py
        fh.write("recognition_limits: {lookups_per_minute: 6000, burst: 1000, misses_per_hour: 1000}\n")
    region = load_region(region.workspace)
    index = connect(index_url(region))
    build(region, index)
    tokens = {inst.id: issue_token(region, inst.id) for inst in region.institutions}
    client = TestClient(create_app(region, keys, index, load_rules()))
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
    assert _get(client, tokens["beishan-chc"], requester="city-first").status_code == 403  # a refused query, logged too
    result = _get(client, tokens["city-first"]).json()["entry"][0]["fullUrl"]
    assert client.post("/fhir/recognition-decision", json={"resource": result, "decision": "retest"}, headers=t).status_code == 400
    ok = client.post("/fhir/recognition-decision", json={"resource": result, "decision": "retest", "reason": "condition-changed"}, headers=t)
    assert ok.status_code == 201
    log = access.entries(runrecord.connect(region.catalog_url))
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


# -- least privilege ------------------------------------------------------------------------

def _mrn(region, institution: str, name: str) -> str:
    """The MRN a hospital's own HIS holds for a person (either demo HIS schema)."""
    url = next(f.url for f in region.institution(institution).feeds if f.name == "his")
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            tables = sa.inspect(conn).get_table_names()
            table, name_col, mrn_col = ("patient", "name", "mrn") if "patient" in tables else ("T_BR_JBXX", "XM", "BAH")
            return conn.execute(sa.text(f'SELECT "{mrn_col}" FROM "{table}" WHERE "{name_col}" = :n'), {"n": name}).scalar_one()
    finally:
        engine.dispose()


def _log_since(region, start: int) -> list[dict]:
    return access.entries(runrecord.connect(region.catalog_url))[start:]


def _log_size(region) -> int:
    return len(access.entries(runrecord.connect(region.catalog_url)))


def _search(client, token, identifier):
    return client.get("/fhir/Observation", params={"patient.identifier": identifier}, headers={"Authorization": f"Bearer {token}"})


def test_an_institution_looks_up_its_own_mrns_only(served):
    region, client, tokens = served
    own = _mrn(region, "city-first", canary().name)
    theirs = _mrn(region, "xihu-second", canary().name)
    ok = _search(client, tokens["city-first"], f"urn:hub:city-first:mrn|{own}")
    assert ok.status_code == 200 and ok.json()["total"] > 0  # the canary's results, found by the caller's own MRN

    start = _log_size(region)
    tried = [theirs, "M0000001", "M0000002", "0000001"]  # MRNs are sequential: enumeration is the attack
    answers = [_search(client, tokens["city-first"], f"urn:hub:xihu-second:mrn|{mrn}") for mrn in tried]
    assert {a.status_code for a in answers} == {403}
    assert len({a.text for a in answers}) == 1  # the same answer whether the MRN exists or not: no oracle
    outcome = answers[0].json()
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "forbidden"
    assert "urn:hub:city-first:mrn" in outcome["issue"][0]["diagnostics"]  # says what it may use instead

    log = _log_since(region, start)
    assert len(log) == len(tried)
    assert all(e["outcome"] == "refused" and e["who"] == "city-first" and e["what"]["system"] == "urn:hub:xihu-second:mrn" for e in log)
    text = json.dumps(log, default=str, ensure_ascii=False)
    assert not any(mrn in text for mrn in tried)


def _with_check_char(first17: str) -> str:
    from hub.identifiers import resident_id_check_char

    return first17 + resident_id_check_char(first17)


@pytest.mark.parametrize(("case", "value"), [
    ("wrong check character", canary().id_number[:17] + ("0" if canary().id_number[17] != "0" else "1")),
    ("17 digits", canary().id_number[:17]),
    ("19 characters", canary().id_number + "1"),
    ("15-digit first-generation number", canary().id_number[:6] + canary().id_number[8:17]),
    ("letters inside", canary().id_number[:10] + "AB" + canary().id_number[12:]),
    ("impossible birth date, valid check character", _with_check_char("33010619801301998")),
    ("empty", ""),
])
def test_malformed_resident_id_numbers_are_refused_not_answered_empty(served, case, value):
    region, client, tokens = served
    start = _log_size(region)
    res = _search(client, tokens["beishan-chc"], f"{ID}|{value}")
    assert res.status_code == 400, case
    body = res.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "invalid"
    assert "check character" in body["issue"][0]["diagnostics"]
    assert not value or value not in res.text
    (entry,) = _log_since(region, start)
    assert (entry["outcome"], entry["who"], entry["what"]["refused"], entry["what"]["status"]) == ("refused", "beishan-chc", "malformed identifier", 400)
    assert not value or value not in json.dumps(entry, default=str)


def test_a_valid_resident_id_number_in_another_spelling_is_accepted(served):
    region, client, tokens = served
    spaced = f"{canary().id_number[:6]} {canary().id_number[6:14]} {canary().id_number[14:]}"
    assert _search(client, tokens["beishan-chc"], f"{ID}|{spaced}").json()["total"] == _get(client, tokens["beishan-chc"]).json()["total"] > 0


def test_an_identifier_sent_as_the_system_is_not_logged(served):
    region, client, tokens = served
    start = _log_size(region)
    res = _search(client, tokens["beishan-chc"], f"urn:oid:{canary().id_number}|x")
    assert res.status_code == 400 and res.json()["issue"][0]["code"] == "not-supported"
    (entry,) = _log_since(region, start)
    assert entry["what"]["system"] == "(other)" and canary().id_number not in json.dumps(entry, default=str)


def _decisions(region) -> int:
    from hub.recognition.index import decisions

    with connect(index_url(region)).connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(decisions)).scalar_one()


def _post(client, token, body):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post("/fhir/recognition-decision", json=body, headers=headers)


def test_decisions_on_results_the_index_does_not_hold_are_refused(served):
    region, client, tokens = served
    token = tokens["city-first"]
    real = _get(client, token).json()["entry"][0]["fullUrl"]
    before, start = _decisions(region), _log_size(region)
    retest = {"decision": "retest", "reason": "condition-changed"}

    unknown = _post(client, token, {"resource": "Observation/0123456789abcdef", **retest})
    assert unknown.status_code == 404 and unknown.json()["issue"][0]["code"] == "not-found"
    planted = _post(client, token, {"resource": f"Observation/{canary().id_number}", **retest})
    assert planted.status_code == 404 and canary().id_number not in planted.text
    other_type = _post(client, token, {"resource": "DiagnosticReport/" + real.rsplit("/", 1)[1], **retest})
    assert other_type.status_code == 404  # an Observation's id is not a DiagnosticReport's
    assert _post(client, token, {"resource": "Patient/" + real.rsplit("/", 1)[1], **retest}).status_code == 400
    assert _post(client, token, {"resource": real.rsplit("/", 1)[1], **retest}).status_code == 400
    free_text = _post(client, token, {"resource": real, "decision": "accept", "reason": f"{canary().name} asked, tel {canary().phone}"})
    assert free_text.status_code == 400  # a reason is a code of reasons.yaml, never free text that could name someone
    malformed = _post(client, token, {"resource": canary().id_number})  # no decision: FastAPI would answer 422 echoing the input
    assert malformed.status_code == 400 and malformed.json()["resourceType"] == "OperationOutcome"
    assert canary().id_number not in malformed.text
    assert _post(client, None, {"resource": real, **retest}).status_code == 401

    assert _decisions(region) == before  # nothing recorded
    log = _log_since(region, start)
    assert len(log) == 8 and all(e["outcome"] == "refused" and e["action"] == "recognition-decision" for e in log)
    assert [e["what"]["status"] for e in log] == [404, 404, 404, 400, 400, 400, 400, 401]
    text = json.dumps(log, default=str, ensure_ascii=False)
    for value in (canary().id_number, canary().name, canary().phone):
        assert value not in text

    assert _post(client, token, {"resource": real, **retest}).status_code == 201
    assert _decisions(region) == before + 1


def test_tokens_issued_and_revoked_while_the_server_runs_take_effect_at_once(served):
    from typer.testing import CliRunner

    from hub.cli import app

    region, client, tokens = served  # the app was created before any of the changes below
    old = tokens["xihu-second"]
    new = issue_token(region, "xihu-second")  # re-issued: the old token stops working
    assert _get(client, old).status_code == 401
    assert _get(client, new).status_code == 200
    assert revoke_token(region, "xihu-second") and not revoke_token(region, "xihu-second")
    assert _get(client, new).status_code == 401

    runner = CliRunner()
    issued = runner.invoke(app, ["recognition", "token", "xihu-second", "--workspace", str(region.workspace)])
    assert issued.exit_code == 0
    tokens["xihu-second"] = issued.stdout.strip()
    assert _get(client, tokens["xihu-second"]).status_code == 200
    revoked = runner.invoke(app, ["recognition", "token", "xihu-second", "--revoke", "--workspace", str(region.workspace)])
    assert revoked.exit_code == 0 and "Revoked" in revoked.stdout
    assert _get(client, tokens["xihu-second"]).status_code == 401
    again = runner.invoke(app, ["recognition", "token", "xihu-second", "--revoke", "--workspace", str(region.workspace)])
    assert again.exit_code != 0
    assert _get(client, tokens["beishan-chc"]).status_code == 200  # other institutions are untouched

    tokens["xihu-second"] = issue_token(region, "xihu-second")  # leave the module's tokens valid
    assert (region.workspace / "recognition_tokens.yaml").stat().st_mode & 0o077 == 0
    refused = [e for e in access.entries(runrecord.connect(region.catalog_url)) if e["who"] == "(no valid token)"]
    assert refused and all(e["outcome"] == "refused" for e in refused)
