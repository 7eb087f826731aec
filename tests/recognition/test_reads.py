"""Reads by id are scoped by the searches an institution made: a grant per person, for read_hours.

On a small index built by hand and a clock the test controls (no pipeline run), as in
test_limits.py.
"""

from __future__ import annotations

from fastapi.testclient import TestClient

from hub.recognition.api import issue_token
from hub.recognition.limits import load_limits
from tests.recognition.test_limits import KNOWN, Clock, lookup, make_app, make_region


def test_a_search_lets_the_institution_read_that_person_for_read_hours(tmp_path, keys):
    region, index = make_region(tmp_path, keys, {"read_hours": 2})
    assert load_limits(region).of("beishan-chc").read_hours == 2
    clock = Clock()
    client = TestClient(make_app(region, index, keys, clock))
    searcher, reader = issue_token(region, "city-first"), issue_token(region, "beishan-chc")
    entries = lookup(client, searcher, KNOWN[3]).json()["entry"]
    url = entries[0]["fullUrl"]

    def read(token):
        return client.get(url, headers={"Authorization": f"Bearer {token}"})

    assert read(searcher).status_code == 200
    refused = read(reader)  # beishan-chc never asked for this person
    assert refused.status_code == 404 and refused.json()["issue"][0]["code"] == "not-found"
    assert lookup(client, reader, KNOWN[3]).status_code == 200
    got = read(reader)
    assert got.status_code == 200 and got.json()["meta"]["tag"][0]["code"] != "same-institution"  # judged for the reader
    clock.t += 2 * 3600 - 60
    assert read(reader).status_code == 200
    clock.t += 120  # the grant has run out
    assert read(reader).status_code == 404
    assert lookup(client, reader, KNOWN[3]).status_code == 200 and read(reader).status_code == 200
    other = lookup(client, searcher, KNOWN[4]).json()["entry"][0]["fullUrl"]  # a grant is per person
    assert client.get(other, headers={"Authorization": f"Bearer {reader}"}).status_code == 404
    assert lookup(client, reader, KNOWN[4]).status_code == 200
    assert client.get(other, headers={"Authorization": f"Bearer {reader}"}).status_code == 200
