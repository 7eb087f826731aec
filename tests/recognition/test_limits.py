"""Recognition API limits: enumerating resident ID numbers is throttled, then suspended; clinics are not.

A district code and a birth date leave 1000 candidate ID numbers (sequence 000-999, check
character computed): the attack is tried as the finding did, 1000 probes in about 5 s, on
a small index built by hand and a clock the test controls, so the counts are exact.
"""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
import sqlalchemy as sa
import yaml
from fastapi.testclient import TestClient

from hub.identifiers import resident_id_check_char
from hub.lineage import access, runrecord
from hub.recognition import api as api_module
from hub.recognition.api import create_app, issue_token
from hub.recognition.index import connect, index_url, patient_ids, results
from hub.recognition.limits import limit_states, load_limits
from hub.recognition.query import patient_for
from hub.recognition.rules import load_rules
from hub.region import load_region
from hub.yamlio import ConfigError

ID = "urn:oid:2.16.156.10011.1.3"
PREFIX = "33010619800101"  # district 330106, born 1980-01-01: 1000 candidates
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=1)
INSTITUTIONS = ("city-first", "xihu-second", "beishan-chc")


def resident_id(seq: int, prefix: str = PREFIX) -> str:
    first17 = prefix + f"{seq:03d}"
    return first17 + resident_id_check_char(first17)


KNOWN = [resident_id(s) for s in (17, 245, 512, 777, 903)]  # people with results in the region
DR_ONLY = resident_id(318)  # a person with only DiagnosticReports, at another institution
OLD_ONLY = resident_id(640)  # a person whose only result is years old
OWN_MRN = ("M0001", KNOWN[0])  # beishan-chc's MRN for KNOWN[0]
CLINIC = [resident_id(s, "33010219750315") for s in range(40)]  # another birth date: a clinic's patients


class Clock:
    """Epoch seconds the test moves by hand."""

    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


def _row(keys, idn: str, rtype: str, loinc: str, inst: str, when: dt.datetime) -> dict:
    rid = f"{rtype[:3].lower()}-{loinc}-{inst}-{abs(hash(idn)) % 10**8}"
    return {"patient": patient_for(None, keys, ID, idn), "resource_type": rtype, "loinc": loinc, "institution": inst,
            "observation_id": rid, "effective_time": when, "status": "final",
            "resource": json.dumps({"resourceType": rtype, "id": rid, "status": "final",
                                    "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]}})}


def make_region(tmp_path, keys, limits: dict | None = None):
    """A region of three institutions and an index holding the people above (no pipeline run needed)."""
    doc = {"region": "test", "institutions": [{"id": i, "name": i} for i in INSTITUTIONS]}
    if limits is not None:
        doc["recognition_limits"] = limits
    (tmp_path / "region.yaml").write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    region = load_region(tmp_path)
    index = connect(index_url(region))
    recent = NOW - dt.timedelta(days=5)
    rows = []
    for idn in KNOWN + CLINIC:
        rows += [_row(keys, idn, "Observation", "4548-4", "city-first", recent), _row(keys, idn, "Observation", "2823-3", "xihu-second", recent)]
    rows.append(_row(keys, DR_ONLY, "DiagnosticReport", "24627-2", "xihu-second", recent))
    rows.append(_row(keys, OLD_ONLY, "Observation", "4548-4", "xihu-second", dt.datetime(2019, 5, 1, tzinfo=dt.UTC)))
    from deid.actions import pseudonym

    with index.begin() as conn:
        conn.execute(results.insert(), rows)
        conn.execute(patient_ids.insert(), [{"identifier": pseudonym(keys, "identifier", OWN_MRN[0], "urn:hub:beishan-chc:mrn"),
                                            "patient": patient_for(None, keys, ID, OWN_MRN[1])}])
    return region, index


def make_app(region, index, keys, clock):
    return create_app(region, keys, index, load_rules(), clock=clock)


def lookup(client, token, idn: str, resource: str = "Observation", **params):
    return client.get(f"/fhir/{resource}", params={"patient.identifier": f"{ID}|{idn}", **params},
                      headers={"Authorization": f"Bearer {token}"})


def log(region, action: str | None = None) -> list[dict]:
    return access.entries(runrecord.connect(region.catalog_url), action=action)


@pytest.mark.slow  # 1000 requests, each writing the access log: about 8 s
def test_a_thousand_id_probes_are_throttled_after_the_burst_with_retry_after(tmp_path, keys):
    region, index = make_region(tmp_path, keys, {"lookups_per_minute": 30, "burst": 10, "misses_per_hour": 5000})
    clock = Clock()
    client = TestClient(make_app(region, index, keys, clock))
    token = issue_token(region, "beishan-chc")
    start = len(log(region))
    statuses, hits, retry = [], 0, set()
    for seq in range(1000):  # 1000 probes in 5.4 s, as the attack did
        res = lookup(client, token, resident_id(seq), requester="beishan-chc")
        statuses.append(res.status_code)
        if res.status_code == 200:
            hits += res.json()["total"] > 0
        else:
            body = res.json()
            assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "throttled"
            retry.add(int(res.headers["Retry-After"]))
        clock.t += 0.0054
    assert statuses[:10] == [200] * 10  # the burst
    admitted = statuses.count(200)
    assert admitted == 10 + int(5.4 * 30 / 60)  # burst plus what 30 a minute refills in 5.4 s: 12 of 1000
    assert set(statuses) == {200, 429} and hits <= 1
    assert retry and min(retry) >= 1 and max(retry) <= 2  # one lookup refills in 2 s at 30 a minute

    refused = [e for e in log(region)[start:] if e["outcome"] == "refused"]
    assert len(refused) == 1000 - admitted
    assert all(e["who"] == "beishan-chc" and e["what"]["status"] == 429 and e["what"]["refused"] == "rate limit" for e in refused)
    text = json.dumps(log(region), default=str)
    assert not any(resident_id(seq) in text for seq in range(1000))  # no probed number in the access log

    clock.t += max(retry)  # honouring Retry-After works
    assert lookup(client, token, KNOWN[0]).status_code == 200
    other = issue_token(region, "city-first")  # limits are per token: another institution is not affected
    assert lookup(client, other, KNOWN[0]).status_code == 200


def test_the_miss_budget_suspends_the_token_and_raises_an_alert(tmp_path, keys):
    from typer.testing import CliRunner

    from hub.cli import app as cli

    region, index = make_region(tmp_path, keys, {"lookups_per_minute": 6000, "burst": 2000, "misses_per_hour": 5, "suspend_minutes": 30})
    clock = Clock()
    client = TestClient(make_app(region, index, keys, clock))
    token, other = issue_token(region, "beishan-chc"), issue_token(region, "city-first")
    for _ in range(20):  # hits never draw on the miss budget
        assert lookup(client, token, KNOWN[1]).json()["total"] == 2
    unknown = [resident_id(s) for s in range(100, 106)]
    for idn in unknown:  # 5 misses are allowed; the 6th is answered like the others, and suspends
        res = lookup(client, token, idn)
        assert res.status_code == 200 and res.json()["total"] == 0
    (alert,) = log(region, "recognition-alert")
    assert alert["who"] == "beishan-chc" and alert["outcome"] == "refused"
    assert alert["what"]["lift"] == "hub recognition token beishan-chc" and alert["what"]["misses_per_hour"] == 5
    assert not any(idn in json.dumps(alert, default=str) for idn in unknown)

    suspended = lookup(client, token, KNOWN[1])  # the token is suspended: real patients too
    assert suspended.status_code == 429 and suspended.json()["issue"][0]["code"] == "throttled"
    assert 1790 <= int(suspended.headers["Retry-After"]) <= 1800
    assert client.get("/fhir/Observation", params={"patient.identifier": f"urn:hub:beishan-chc:mrn|{OWN_MRN[0]}"},
                      headers={"Authorization": f"Bearer {token}"}).status_code == 429
    decision = client.post("/fhir/recognition-decision", json={"resource": "Observation/x", "decision": "accept"},
                           headers={"Authorization": f"Bearer {token}"})
    assert decision.status_code == 429
    assert lookup(client, other, KNOWN[1]).status_code == 200  # other institutions are untouched
    last = log(region)[-2]
    assert (last["who"], last["outcome"], last["what"]["refused"]) == ("beishan-chc", "refused", "token suspended")

    runner = CliRunner()  # the operator finds the alert, and the suspension
    found = runner.invoke(cli, ["audit", "access", "--action", "recognition-alert", "--fhir", "--workspace", str(tmp_path)])
    (event,) = [json.loads(line) for line in found.stdout.splitlines()]
    assert event["agent"][0]["who"]["display"] == "beishan-chc" and "enumeration" in event["entity"][0]["what"]["display"]
    client.app.state.limiter.flush()
    shown = runner.invoke(cli, ["recognition", "limits", "--json", "--workspace", str(tmp_path)])
    state = {r["institution"]: r for r in json.loads(shown.stdout)}
    assert state["beishan-chc"]["suspended_until"] and state["beishan-chc"]["misses_left"] == 0
    assert state["city-first"]["suspended_until"] is None

    fresh = issue_token(region, "beishan-chc")  # re-issuing the token lifts the suspension
    assert lookup(client, fresh, KNOWN[1]).status_code == 200
    assert lookup(client, token, KNOWN[1]).status_code == 401  # and the old token is gone


def test_a_suspension_ends_after_the_cool_down(tmp_path, keys):
    region, index = make_region(tmp_path, keys, {"misses_per_hour": 2, "suspend_minutes": 10})
    clock = Clock()
    client = TestClient(make_app(region, index, keys, clock))
    token = issue_token(region, "xihu-second")
    for seq in range(3):
        assert lookup(client, token, resident_id(seq)).status_code == 200
    assert lookup(client, token, KNOWN[0]).status_code == 429
    clock.t += 599
    assert lookup(client, token, KNOWN[0]).status_code == 429
    clock.t += 2
    assert lookup(client, token, KNOWN[0]).status_code == 200
    assert lookup(client, token, resident_id(50)).status_code == 200  # the budget refilled during the cool-down


def test_a_clinics_workload_is_not_throttled_by_the_defaults(tmp_path, keys):
    region, index = make_region(tmp_path, keys)  # no recognition_limits: the documented defaults
    clock = Clock()
    client = TestClient(make_app(region, index, keys, clock))
    token = issue_token(region, "beishan-chc")
    for idn in CLINIC[:20]:  # 20 patients at once (a morning clinic opening)
        res = lookup(client, token, idn, requester="beishan-chc")
        assert res.status_code == 200 and res.json()["total"] == 2
    clock.t += 60
    statuses = []
    for i in range(200):  # then an hour at one lookup every 18 s, one patient in 20 new to the region
        idn = resident_id(i, "33010219900101") if i % 20 == 0 else CLINIC[i % len(CLINIC)]
        statuses.append(lookup(client, token, idn).status_code)
        clock.t += 18
    assert statuses == [200] * 200
    assert log(region, "recognition-alert") == []


def test_no_such_person_and_a_person_with_nothing_to_show_answer_alike(tmp_path, keys, monkeypatch):
    region, index = make_region(tmp_path, keys)
    client = TestClient(make_app(region, index, keys, Clock()))
    token = issue_token(region, "beishan-chc")
    calls = {"query": 0, "known": 0, "grant": 0}
    real_query, real_known, real_grant = api_module.query, api_module.known_patient, api_module.Served.grant

    def counting_query(*a, **k):
        calls["query"] += 1
        return real_query(*a, **k)

    def counting_known(*a, **k):
        calls["known"] += 1
        return real_known(*a, **k)

    monkeypatch.setattr(api_module, "query", counting_query)
    def counting_grant(*a, **k):
        calls["grant"] += 1
        return real_grant(*a, **k)

    monkeypatch.setattr(api_module, "known_patient", counting_known)
    monkeypatch.setattr(api_module.Served, "grant", counting_grant)
    nobody = resident_id(999)  # a valid ID number of no one in the region
    cases = [  # people the region knows who have nothing to show for the request
        (DR_ONLY, "Observation", {}),  # no Observation anywhere
        (KNOWN[2], "Observation", {"code": "http://loinc.org|1988-5"}),  # not for this item
        (OLD_ONLY, "Observation", {"date": "ge2024-01-01"}),  # nothing in the period
        (KNOWN[2], "DiagnosticReport", {}),  # no report
    ]
    for idn, resource, params in cases:
        known = lookup(client, token, idn, resource, **params)
        miss = lookup(client, token, nobody, resource, **params)
        assert known.status_code == miss.status_code == 200
        # byte for byte the same Bundle, but for the identifier the caller sent, which the self link repeats
        assert known.content.replace(idn.encode(), b"<id>") == miss.content.replace(nobody.encode(), b"<id>")
        body = miss.json()
        assert (body["resourceType"], body["type"], body["total"], "entry" in body) == ("Bundle", "searchset", 0, False)
        assert [link["relation"] for link in body["link"]] == ["self"]
        assert {k: v for k, v in known.headers.items() if k != "date"} == {k: v for k, v in miss.headers.items() if k != "date"}
    assert calls == {"query": 2 * len(cases), "known": 2 * len(cases), "grant": 2 * len(cases)}  # no early return for a miss
    # the access log (the operator's, never the caller's) tells the miss apart, without the number
    entries = [e for e in log(region, "recognition-query") if e["outcome"] == "success"][-2 * len(cases):]
    assert [e["what"]["patient_known"] for e in entries] == [True, False] * len(cases)


def test_limits_survive_a_restart_of_the_server(tmp_path, keys):
    region, index = make_region(tmp_path, keys, {"lookups_per_minute": 30, "burst": 10, "misses_per_hour": 3})
    clock = Clock()
    token, chc = issue_token(region, "xihu-second"), issue_token(region, "beishan-chc")
    with TestClient(make_app(region, index, keys, clock)) as client:  # the context runs the app's shutdown
        assert [lookup(client, token, KNOWN[0]).status_code for _ in range(11)] == [200] * 10 + [429]
        for seq in range(4):
            lookup(client, chc, resident_id(seq))
        assert lookup(client, chc, KNOWN[0]).status_code == 429  # suspended
    with TestClient(make_app(region, connect(index_url(region)), keys, clock)) as client:  # a new process
        assert lookup(client, token, KNOWN[0]).status_code == 429  # the bucket is still empty
        res = lookup(client, chc, KNOWN[0])
        assert res.status_code == 429 and int(res.headers["Retry-After"]) > 3500  # still suspended
        clock.t += 2
        assert lookup(client, token, KNOWN[0]).status_code == 200  # and refills at the configured rate
    current = {api_module.token_hash(token): "xihu-second", api_module.token_hash(chc): "beishan-chc"}
    states = {s["institution"]: s for s in limit_states(index, load_limits(region), current, clock.t)}
    assert states["beishan-chc"]["suspended_until"] > clock.t and states["xihu-second"]["lookups_left"] == 0


def test_two_workers_share_one_bucket(tmp_path, keys):
    region, index = make_region(tmp_path, keys, {"lookups_per_minute": 30, "burst": 10, "sync_seconds": 0})
    clock = Clock()
    token = issue_token(region, "city-first")
    workers = [TestClient(make_app(region, connect(index_url(region)), keys, clock)) for _ in range(2)]
    statuses = [lookup(workers[i % 2], token, KNOWN[0]).status_code for i in range(30)]
    assert statuses.count(200) == 10  # not 10 per worker


def test_an_institution_can_have_its_own_limits(tmp_path, keys):
    region, index = make_region(tmp_path, keys, {"burst": 5, "institutions": {"city-first": {"burst": 50}}})
    policy = load_limits(region)
    assert policy.of("beishan-chc").burst == 5 and policy.of("city-first").burst == 50
    assert policy.of("city-first").misses_per_hour == 20  # the rest inherits
    client = TestClient(make_app(region, index, keys, Clock()))
    big, small = issue_token(region, "city-first"), issue_token(region, "beishan-chc")
    assert [lookup(client, small, KNOWN[0]).status_code for _ in range(6)] == [200] * 5 + [429]
    assert {lookup(client, big, KNOWN[0]).status_code for _ in range(30)} == {200}


@pytest.mark.parametrize(("limits", "field"), [
    ({"burst": -1}, "recognition_limits.burst"),
    ({"lookups_per_minute": "many"}, "recognition_limits.lookups_per_minute"),
    ({"misses_per_day": 3}, "recognition_limits.misses_per_day"),
    ({"burst": 0.5}, "recognition_limits.burst"),
    ({"institutions": {"nowhere": {"burst": 3}}}, "recognition_limits.institutions.nowhere"),
    ({"institutions": {"city-first": {"suspend_minutes": 0}}}, "recognition_limits.institutions.city-first.suspend_minutes"),
    ({"sync_seconds": 600}, "recognition_limits.sync_seconds"),
])
def test_limit_errors_name_file_line_and_field(tmp_path, keys, limits, field):
    region, _ = make_region(tmp_path, keys, limits)
    with pytest.raises(ConfigError) as exc:
        load_limits(region)
    assert exc.value.field == field and exc.value.file.endswith("region.yaml") and exc.value.line > 1


def test_a_limits_setting_that_is_not_a_mapping_is_refused(tmp_path):
    (tmp_path / "region.yaml").write_text("institutions:\n  - id: city-first\nrecognition_limits: 30\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_region(tmp_path)
    assert exc.value.field == "recognition_limits" and exc.value.line == 3


def test_limit_state_holds_no_token(tmp_path, keys):
    region, index = make_region(tmp_path, keys)
    client = TestClient(make_app(region, index, keys, Clock()))
    token = issue_token(region, "city-first")
    lookup(client, token, KNOWN[0])
    client.app.state.limiter.flush()
    with index.connect() as conn:
        dump = json.dumps([list(r) for r in conn.execute(sa.text("SELECT * FROM recognition_limit_state"))])
    assert token not in dump and api_module.token_hash(token) in dump
