"""HL7 v2 feeds: message files published through the mapping language, incrementally, losing nothing.

The 12 sample messages (tests/data/hl7v2/messages, from Microsoft's FHIR-Converter) each go
through the default mappings; the other messages are written here: a GB18030 result whose
name and text hold characters whose second byte is an HL7 separator, escape sequences, a
file of broken and unsupported messages, MLLP-framed files, corrected results and ADT updates.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from hub.identifiers import find_identifiers
from hub.lakehouse.tables import open_catalog
from hub.lineage import runrecord
from hub.pipeline import run_institution
from hub.quarantine import list_rows, open_row
from hub.region import load_region
from hub.sources import hl7v2, ndjson
from hub.yamlio import ConfigError
from tests.conftest import with_signing_key

pytestmark = pytest.mark.slow
SAMPLES = Path(__file__).parents[1] / "data" / "hl7v2" / "messages"
INST = "lab-hl7"
MAPPINGS = ["hl7v2_adt", "hl7v2_oru_r01", "hl7v2_orders"]
NAME = "欧阳娜娜"


def _region(tmp_path: Path, feeds: list[dict]):
    doc = {"region": "test", "institutions": [{"id": INST, "name": "HL7 lab", "level": "secondary", "feeds": feeds}]}
    (tmp_path / "region.yaml").write_text(yaml.safe_dump(with_signing_key(tmp_path, doc), allow_unicode=True), encoding="utf-8")
    return load_region(tmp_path)


def _feed(name: str, folder: Path, **extra) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    return {"name": name, "kind": "hl7v2", "path": str(folder), "mapping": MAPPINGS, **extra}


def _rows(region, rtype: str) -> list[dict]:
    table = open_catalog(region.catalog_url, region.warehouse).load_table(f"recognition.{rtype.lower()}")
    return table.scan(row_filter=f"institution == '{INST}'").to_arrow().to_pylist()


def _resources(region, rtype: str) -> list[dict]:
    return [json.loads(r["resource"]) for r in _rows(region, rtype)]


def _reconciled(report) -> None:
    for c in report.counts:
        assert c.rows_read == c.published + c.quarantined, c


def _msg(control: str, when: str, mtype: str, segments: list[str], charset: str = "UNICODE UTF-8") -> str:
    msh = f"MSH|^~\\&|LIS|LAB|HUB|REGION|{when}||{mtype}|{control}|P|2.5.1|||AL|NE|CHN|{charset}"
    return "\r".join([msh, *segments]) + "\r"


PID = "PID|1||MRN-8001^^^LAB^MR||{name}^^^^^^L||19800307|F"
OBR = "OBR|1|PL-1|FL-1|2345-7^Glucose^LN|||20260301083000+0800||||||||||||||||20260301100000+0800||F"


def _oru(control: str, when: str, value: str, status: str, name: str = "WANG^LI", extra: list[str] = ()) -> str:
    return _msg(control, when, "ORU^R01", [PID.format(name=name), "PV1|1|O|||||||||||||||||V-1", OBR,
                                           f"OBX|1|NM|2345-7^Glucose^LN||{value}|mmol/L|3.9-6.1|N|||{status}|||20260301083000+0800",
                                           *extra])


# ---- the 12 sample messages -----------------------------------------------------------------

#: What each sample must give (resource type: count of rows published from it).
EXPECTED = {
    "ADT-A01-01.hl7": {"Patient": 1, "Encounter": 1},
    "ADT-A04-01.hl7": {"Patient": 1, "Encounter": 1},
    "ADT-A08-01.hl7": {"Patient": 1, "Encounter": 1},
    "LAB-ORU-1.hl7": {"Patient": 1, "DiagnosticReport": 2, "Observation": 10, "Specimen": 2},
    "LAB-ORU-2.hl7": {"Patient": 1, "DiagnosticReport": 2, "Observation": 10, "Specimen": 2},
    "OML-O21-01.hl7": {"Patient": 1, "ServiceRequest": 1, "Specimen": 1},
    "OML-O21-02.hl7": {"Patient": 1, "ServiceRequest": 2, "Specimen": 2},
    "ORM-O01-01.hl7": {"Patient": 1, "ServiceRequest": 1},
    "ORM-O01-02.hl7": {"Patient": 1, "ServiceRequest": 1},
    "ORU-R01-01.hl7": {"Patient": 1, "DiagnosticReport": 1, "Observation": 2, "Specimen": 1},  # its RP and ED OBX carry no value
    "OUL-R22-01.hl7": {"Patient": 1, "DiagnosticReport": 1, "Observation": 2, "Specimen": 1},
    "OUL-R23-01.hl7": {"Patient": 1, "DiagnosticReport": 1, "Observation": 2, "Specimen": 1},
}


def test_every_sample_message_converts(tmp_path, keys):
    """Each sample, as its own feed (two samples reuse one control id), is read, mapped and published whole."""
    feeds = []
    for sample in sorted(SAMPLES.glob("*.hl7")):
        folder = tmp_path / "drop" / sample.stem.lower()
        feeds.append(_feed(sample.stem.lower(), folder))
        shutil.copy(sample, folder / sample.name)
    assert len(feeds) == 12
    region = _region(tmp_path, feeds)
    report = run_institution(region, INST, keys)
    _reconciled(report)
    got: dict[str, dict[str, int]] = {}
    for c in report.counts:
        assert c.quarantined == 0, (c, dict(report.causes))
        per = got.setdefault(f"{c.feed.upper()}.hl7", {})
        per[c.resource_type] = per.get(c.resource_type, 0) + c.published
    assert {k: {r: n for r, n in v.items() if n} for k, v in got.items()} == EXPECTED
    for info in report.sources.values():
        assert info["kind"] == "hl7v2"
        assert [(f["messages"], f["mapped"], f["quarantined"]) for f in info["files"].values()] == [(1, 1, 0)]
    # clinical content of one result: code, value, unit, status, time, and the references made
    obs = {o["code"]["coding"][0]["code"]: o for o in _resources(region, "Observation")}
    rbc = obs["11273-0"]  # LAB-ORU-2 is the final version of LAB-ORU-1's preliminary results: same ids, replaced
    assert rbc["code"]["coding"][0]["system"] == "http://loinc.org" and rbc["status"] == "final"
    assert rbc["valueQuantity"]["value"] == 4.08 and rbc["valueQuantity"]["unit"] == "tera.l-1"
    assert rbc["effectiveDateTime"] == "2014-10-06T08:30:00+07:00"
    assert rbc["subject"]["reference"].startswith("Patient/") and rbc["specimen"]["reference"].startswith("Specimen/")
    salmonella = obs["625-4"]["valueCodeableConcept"]["coding"][0]
    assert salmonella == {"system": "http://snomed.info/sct", "code": "27268008", "display": "Salmonella"}
    assert {o["status"] for o in obs.values()} <= {"final", "preliminary", "registered", "corrected"}
    published = " ".join(r["resource"] for t in ("Patient", "Observation", "Encounter") for r in _rows(region, t))
    assert "EVERYMAN" not in published and "DUCK" not in published and "PATID1234" not in published


# ---- character sets and escapes --------------------------------------------------------------

def _separator_char() -> str:
    """A CJK character whose GB18030 encoding ends in an HL7 separator byte ('|', '^', '~' or '\\')."""
    for cp in range(0x4E00, 0x9FA5):
        b = chr(cp).encode("gb18030")
        if b[-1:] in (b"|", b"^", b"\\"):
            return chr(cp)
    raise AssertionError("no such character")


def test_gb18030_name_and_text_round_trip(tmp_path, keys):
    tricky = _separator_char()
    name = NAME + tricky
    text = f"复查{tricky}：阴性"
    declared = _oru("GB-1", "20260301120000+0800", "5.6", "F", name=name,
                    extra=[f"OBX|2|TX|8251-1^Service comment^LN||{text}||||||F"]).replace("UNICODE UTF-8", "GB 18030-2000")
    undeclared = _oru("GB-2", "20260301120000+0800", "5.6", "F", name=name).replace("UNICODE UTF-8", "")
    raw = declared.encode("gb18030")
    assert tricky.encode("gb18030")[-1:] in raw  # a separator byte inside a character: decode before parsing
    msg = hl7v2.parse_message(raw)
    pid = next(s for s in msg.segments if s.type == "PID")
    assert pid.fields[5][0][0][0] == name and msg.codec == "gb18030"
    assert hl7v2.parse_message(undeclared.encode("gb18030"), "GB18030").segments[1].fields[5][0][0][0] == name

    region = _region(tmp_path, [_feed("gb", tmp_path / "gb", encoding="GB18030"), _feed("gbd", tmp_path / "gbd", encoding="gb18030")])
    (tmp_path / "gb" / "a.hl7").write_bytes(raw)
    (tmp_path / "gbd" / "b.hl7").write_bytes(undeclared.encode("gb18030"))
    report = run_institution(region, INST, keys)
    _reconciled(report)
    assert not report.causes, dict(report.causes)
    texts = [o.get("valueString") for o in _resources(region, "Observation")]
    assert text in texts
    published = " ".join(r["resource"] for t in ("Patient", "Observation") for r in _rows(region, t))
    assert NAME not in published and not find_identifiers(published, [name, "MRN-8001"])


def test_escape_sequences_decode():
    text = r"A\F\B\S\C\T\D\R\E\E\F \XE998B4E680A7\ end"
    raw = _oru("ESC-1", "20260301120000+0800", "1", "F", extra=[f"OBX|2|TX|8251-1^Comment^LN||{text}~second line||||||F"])
    msg = hl7v2.parse_message(raw.encode("utf-8"))
    rows = hl7v2.Rows(["OBX_5_all", "SEG_INDEX"], "OBX", [], "test", 1).rows(msg)
    assert rows[1] == ("A|B^C&D~E\\F 阴性 end\nsecond line", 6)
    gb = _oru("ESC-2", "20260301120000+0800", "1", "F", extra=[r"OBX|2|ST|8251-1^Comment^LN||\XD2F5D0D4\||||||F"])
    gb = gb.replace("UNICODE UTF-8", "GB 18030-2000")  # \X..\ bytes are in the message's character set
    assert hl7v2.Rows(["OBX_5"], "OBX", [], "test", 1).rows(hl7v2.parse_message(gb.encode("gb18030")))[1] == ("阴性",)


# ---- losing nothing -----------------------------------------------------------------------------

def test_malformed_and_unsupported_messages_are_quarantined_with_reasons(tmp_path, keys):
    good = _oru("OK-1", "20260301120000+0800", "5.6", "F")
    broken = _oru("BAD-1", "20260301120000+0800", "5.6", "F").replace("PV1|", "this is not a segment\rPV1|")
    charset = _oru("BAD-2", "20260301120000+0800", "5.6", "F").replace("UNICODE UTF-8", "KLINGON-8")
    undecodable = _oru("BAD-3", "20260301120000+0800", "5.6", "F", name="\u00e9").encode("latin-1")  # declared UTF-8
    unsupported = _msg("MFN-1", "20260301120000+0800", "MFN^M01", ["MFI|LAB"])
    region = _region(tmp_path, [_feed("lis", tmp_path / "drop")])
    data = b"".join(m.encode("utf-8") if isinstance(m, str) else m for m in (good, broken, charset, undecodable, unsupported))
    (tmp_path / "drop" / "batch.hl7").write_bytes(data.replace(b"\r", b"\r\n"))
    report = run_institution(region, INST, keys)
    _reconciled(report)
    info = report.sources["lis"]["files"]["batch.hl7"]
    assert (info["messages"], info["mapped"], info["quarantined"]) == (5, 1, 4)
    held = [c for c in report.counts if c.resource_type == "MessageHeader"]
    assert [(c.source_table, c.rows_read, c.quarantined) for c in held] == [("batch.hl7", 4, 4)]
    engine = runrecord.connect(region.catalog_url)
    entries = [e for e in list_rows(engine, institution=INST) if e["resource_type"] == "MessageHeader"]
    reasons = sorted(e["reason"] for e in entries)
    assert reasons[0].startswith("batch.hl7 message 2 ") and "segment 3 has no segment id" in reasons[0]
    assert "message 3 " in reasons[1] and "unknown character set in MSH-18" in reasons[1]
    assert "message 4 " in reasons[2] and "is not valid utf-8 text" in reasons[2]
    assert "message 5 " in reasons[3] and "MFN^M01 message, which no block" in reasons[3]
    assert all(NAME not in r and "MRN-8001" not in r and "WANG" not in r for r in reasons)
    for e in entries:  # the raw message is kept, sealed: nothing is lost
        row = open_row(engine, keys, e["id"], region.key_file)
        start, end = row["offset"], row["end"]
        assert data.replace(b"\r", b"\r\n")[start:end].rstrip(b"\r\n") == row["raw"].encode("latin-1").rstrip(b"\r\n")
    assert len(_rows(region, "Observation")) == 1


def test_crash_between_publish_and_advance_neither_loses_nor_duplicates(tmp_path, keys, monkeypatch):
    region = _region(tmp_path, [_feed("lis", tmp_path / "drop")])
    path = tmp_path / "drop" / "results.hl7"
    path.write_text(_oru("C-1", "20260301120000+0800", "5.6", "F"), encoding="utf-8")

    def crash(*args, **kwargs):
        raise RuntimeError("killed after the commit, before the positions moved")

    monkeypatch.setattr(ndjson, "advance", crash)
    with pytest.raises(RuntimeError):
        run_institution(region, INST, keys)
    monkeypatch.undo()
    engine = runrecord.connect(region.catalog_url)
    assert ndjson.get_position(engine, INST, "lis", "results.hl7") is None
    first = {r["id"]: r["content_hash"] for r in _rows(region, "Observation")}
    assert len(first) == 1  # published before the crash

    report = run_institution(region, INST, keys)  # reads the message again: same ids, nothing new written
    _reconciled(report)
    assert report.sources["lis"]["files"]["results.hl7"]["from_message"] == 1
    assert {r["id"]: r["content_hash"] for r in _rows(region, "Observation")} == first
    assert sum(c.written for c in report.counts) == 0
    assert ndjson.get_position(engine, INST, "lis", "results.hl7").line == 1

    with path.open("a", encoding="utf-8") as fh:  # the sender appends a message: only it is read
        fh.write(_oru("C-2", "20260302120000+0800", "7.1", "F").replace("FL-1", "FL-2").replace("PL-1", "PL-2"))
    report = run_institution(region, INST, keys)
    assert report.sources["lis"]["files"]["results.hl7"] | {"state": None} == {
        "state": None, "from_message": 2, "to_message": 2, "messages": 1, "mapped": 1, "quarantined": 0}
    assert len(_rows(region, "Observation")) == 2


def test_mllp_framed_file_with_unfinished_frame(tmp_path, keys):
    region = _region(tmp_path, [_feed("lis", tmp_path / "drop")])
    one, two = (_oru(f"M-{i}", "20260301120000+0800", "5.6", "F").replace("FL-1", f"FL-{i}") for i in (1, 2))
    three = _oru("M-3", "20260301120000+0800", "5.6", "F").replace("FL-1", "FL-3")
    frame = lambda m: b"\x0b" + m.replace("\r", "\n").encode() + b"\x1c\r"  # noqa: E731
    path = tmp_path / "drop" / "stream.hl7"
    path.write_bytes(frame(one) + frame(two) + frame(three)[:40])
    report = run_institution(region, INST, keys)
    assert report.sources["lis"]["files"]["stream.hl7"]["messages"] == 2
    assert len(_rows(region, "Observation")) == 2
    path.write_bytes(frame(one) + frame(two) + frame(three))
    report = run_institution(region, INST, keys)
    assert report.sources["lis"]["files"]["stream.hl7"]["from_message"] == 3
    assert len(_rows(region, "Observation")) == 3


# ---- versions ----------------------------------------------------------------------------------

def test_corrected_result_and_adt_update_replace_under_the_same_id(tmp_path, keys):
    region = _region(tmp_path, [_feed("lis", tmp_path / "drop")])
    adt = lambda c, e, when, sex: _msg(c, when, f"ADT^{e}", [PID.format(name="WANG^LI").replace("|F", f"|{sex}"),  # noqa: E731
                                                             "PV1|1|I|||||||||||||||||V-1"])
    (tmp_path / "drop" / "1.hl7").write_text(adt("A-1", "A01", "20260301080000+0800", "F") + _oru("R-1", "20260301120000+0800", "5.6", "F"))
    run_institution(region, INST, keys)
    (patient,) = _resources(region, "Patient")
    (obs,) = _resources(region, "Observation")
    assert (obs["status"], obs["valueQuantity"]["value"], patient["gender"]) == ("final", 5.6, "female")

    # the A08 is the latest message about the person, later than the result that repeats the old PID:
    # its version stands, though the ORU's Patient block runs after the ADT's
    (tmp_path / "drop" / "2.hl7").write_text(_oru("R-2", "20260302120000+0800", "5.9", "C") + adt("A-2", "A08", "20260302130000+0800", "U"))
    report = run_institution(region, INST, keys)
    _reconciled(report)
    (patient2,) = _resources(region, "Patient")
    (obs2,) = _resources(region, "Observation")
    assert patient2["id"] == patient["id"] and patient2["gender"] == "unknown"
    assert obs2["id"] == obs["id"] and (obs2["status"], obs2["valueQuantity"]["value"]) == ("corrected", 5.9)
    (encounter,) = _resources(region, "Encounter")
    assert encounter["class"]["code"] == "IMP"

    engine = runrecord.connect(region.catalog_url)
    where = hl7v2.message_of(engine, INST, obs["id"])
    assert (where["file"], where["line"], where["feed"]) == ("2.hl7", 1, "lis")
    where = hl7v2.message_of(engine, INST, patient["id"])  # the A08's version, not the older ORU's PID
    assert (where["file"], where["line"]) == ("2.hl7", 2)
    from hub.lineage.trace import trace

    traced = trace(region, keys, f"Observation/{obs['id']}")  # hub lineage trace: down to the file and message
    assert (traced["source_line"]["file"], traced["source_line"]["line"]) == ("2.hl7", 1)


# ---- configuration -----------------------------------------------------------------------------

def test_region_errors_name_file_line_and_field(tmp_path):
    (tmp_path / "drop").mkdir()
    for feed, field, problem in (
        ({"name": "lis", "kind": "hl7v2", "mapping": "hl7v2_adt"}, "feeds[lis].path", "is missing"),
        ({"name": "lis", "kind": "hl7v2", "path": "drop"}, "feeds[lis].mapping", "is missing"),
        ({"name": "lis", "kind": "hl7v2", "path": "drop", "mapping": ["hl7v2_nope"]}, "feeds[lis].mapping", "not found"),
        ({"name": "lis", "kind": "hl7v2", "path": "drop", "mapping": "hl7v2_adt", "encoding": "EBCDIC-XYZ"}, "feeds[lis].encoding", "is not a character set"),
    ):
        doc = {"region": "t", "institutions": [{"id": INST, "feeds": [feed]}]}
        (tmp_path / "region.yaml").write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        with pytest.raises(ConfigError) as err:
            load_region(tmp_path)
        assert field in err.value.field and problem in str(err.value) and err.value.line > 0


def test_column_paths():
    assert hl7v2.column_path("PID_3r2_1") == hl7v2.ColumnPath("PID", 3, 2, 1, None, False)
    assert hl7v2.column_path("PID_5_1_1") == hl7v2.ColumnPath("PID", 5, None, 1, 1, False)
    assert hl7v2.column_path("NTE_3_all") == hl7v2.ColumnPath("NTE", 3, None, None, None, True)
    assert hl7v2.column_path("patient_id") is None


def test_feeds_list_and_check_show_an_hl7v2_feed(tmp_path):
    from typer.testing import CliRunner

    from hub.cli import app

    _region(tmp_path, [_feed("lis", tmp_path / "drop", encoding="GB18030")])
    shutil.copy(SAMPLES / "LAB-ORU-1.hl7", tmp_path / "drop")
    (tmp_path / "drop" / "z.hl7").write_text(_msg("MFN-1", "20260301120000+0800", "MFN^M01", ["MFI|LAB"]), encoding="utf-8")
    runner = CliRunner()
    listed = runner.invoke(app, ["feeds", "list", "--workspace", str(tmp_path)])
    assert listed.exit_code == 0 and "hl7v2_oru_r01.yaml" in listed.stdout and "GB18030" in listed.stdout
    checked = runner.invoke(app, ["feeds", "check", f"{INST}/lis", "--workspace", str(tmp_path), "--json"])
    assert checked.exit_code == 1, checked.stdout  # the unsupported message would be quarantined
    result = json.loads(checked.stdout)
    blocks = {(b["table"], b["resource"]): b for b in result["blocks"]}
    assert blocks[("hl7v2_oru_r01:OBX", "Observation")]["would_publish"] == 10
    assert blocks[("(messages)", "MessageHeader")]["would_quarantine"] == 1
    assert any("no block of the feed's mappings reads" in c["cause"] for c in result["causes"])
    assert not result["leak_scan"]["blocked"]


# ---- MLLP listener ------------------------------------------------------------------------------

async def _send(port: int, frames: list[bytes], *, close_after_partial: bytes | None = None) -> list[bytes]:
    """Send frames over one connection to 127.0.0.1:port, reading each ACK; optionally end with a partial frame."""
    import asyncio

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    acks = []
    for frame in frames:
        writer.write(frame)
        await writer.drain()
        acks.append(await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 10))
    if close_after_partial is not None:
        writer.write(close_after_partial)
        await writer.drain()
    writer.close()
    await writer.wait_closed()
    return acks


def _frame(message: str, encoding: str = "utf-8") -> bytes:
    return b"\x0b" + message.encode(encoding) + b"\x1c\r"


def _msa(ack: bytes) -> list[str]:
    import hl7

    msg = hl7.parse(ack.strip(b"\x0b\x1c\r").decode())
    return [msg.unescape(f) for f in str(msg.segment("MSA")).split("|")]


def test_mllp_acks_only_after_durable_storage_and_a_killed_listener_loses_nothing(tmp_path, keys):
    import asyncio

    from hub.sources import mllp

    region = _region(tmp_path, [_feed("lis", tmp_path / "drop")])
    feed = region.institution(INST).feeds[0]
    good = _oru("L-1", "20260301120000+0800", "5.6", "F", name=NAME).replace("UNICODE UTF-8", "GB 18030-2000")
    broken = "MSH|^~\\&|LIS|LAB|HUB|REGION|20260301120000||ORU^R01|L-2|P|2.5.1\rnot a segment\r"
    unsupported = _msg("L-3", "20260301120000+0800", "MFN^M01", ["MFI|LAB"])
    seen_on_disk: list[bool] = []

    async def scenario():
        server, listener = await mllp.serve(feed, INST, keys, "127.0.0.1", 0)
        listener.after_store = lambda path: seen_on_disk.append(path.exists() and path.stat().st_size > 0)
        port = server.sockets[0].getsockname()[1]
        acks = await _send(port, [_frame(good, "gb18030"), _frame(broken), _frame(unsupported)],
                           close_after_partial=b"\x0bMSH|^~\\&|LIS|LAB|HUB|REGION|2026")  # disconnects mid-message
        for _ in range(50):
            if listener.incomplete:
                break
            await asyncio.sleep(0.05)
        server.close()  # killed after the ACKs: what was acknowledged is already on disk
        await server.wait_closed()
        return acks, listener

    acks, listener = asyncio.run(scenario())
    assert [_msa(a)[1] for a in acks] == ["AA", "AE", "AR"]
    assert [_msa(a)[2] for a in acks] == ["L-1", "L-2", "L-3"]
    assert "segment 2 has no segment id" in _msa(acks[1])[3] and "MFN^M01 is not a message type" in _msa(acks[2])[3]
    assert seen_on_disk == [True, True, True] and listener.stored == 3 and listener.incomplete == 1
    sealed = sorted((tmp_path / "drop" / "mllp").iterdir())
    assert len(sealed) == 3 and all(NAME.encode("gb18030") not in p.read_bytes() for p in sealed)  # sealed at rest

    report = run_institution(region, INST, keys)  # the next run publishes what the listener stored
    _reconciled(report)
    files = report.sources["lis"]["files"]
    assert sorted((f["mapped"], f["quarantined"]) for f in files.values()) == [(0, 1), (0, 1), (1, 0)]
    (obs,) = _resources(region, "Observation")
    assert obs["valueQuantity"]["value"] == 5.6
    engine = runrecord.connect(region.catalog_url)
    reasons = sorted(e["reason"] for e in list_rows(engine, institution=INST) if e["resource_type"] == "MessageHeader")
    assert "segment 2 has no segment id" in reasons[0] and "MFN^M01 message" in reasons[1]
    assert run_institution(region, INST, keys).sources["lis"]["files"]["mllp/" + sealed[0].name]["state"] == "unchanged"


def test_split_batches_bom_line_ends_and_stray_bytes():
    one, two = (_oru(f"S-{i}", "20260301120000+0800", "5.6", "F") for i in (1, 2))
    batch = ("FHS|^~\\&|LIS\nBHS|^~\\&|LIS\n" + one.replace("\r", "\n") + two.replace("\r", "\r\n") + "BTS|2\nFTS|1\n").encode()
    found, used = hl7v2.split_messages(b"\xef\xbb\xbf" + batch)
    assert [hl7v2.parse_message(m.data).control_id for m in found] == ["S-1", "S-2"] and used == len(batch) + 3
    assert all(len(hl7v2.parse_message(m.data).segments) == 5 for m in found)
    stray, _ = hl7v2.split_messages(b"garbage before\r" + one.encode())
    assert len(stray) == 2 and stray[0].data.startswith(b"garbage")
    with pytest.raises(hl7v2.MessageProblem, match="does not start with an MSH segment"):
        hl7v2.parse_message(stray[0].data)


def test_messages_are_mapped_in_chunks_with_patients_first(tmp_path, keys, monkeypatch):
    monkeypatch.setattr(hl7v2, "CHUNK_MESSAGES", 2)
    region = _region(tmp_path, [_feed("lis", tmp_path / "drop")])
    msgs = [_oru(f"K-{i}", f"2026030{i + 1}120000+0800", "5.6", "F").replace("FL-1", f"FL-{i}").replace("MRN-8001", f"MRN-{i}")
            for i in range(5)]
    (tmp_path / "drop" / "a.hl7").write_text("".join(msgs[:3]), encoding="utf-8")
    (tmp_path / "drop" / "b.hl7").write_text("".join(msgs[3:]) + "garbage\r", encoding="utf-8")
    report = run_institution(region, INST, keys)
    _reconciled(report)
    files = report.sources["lis"]["files"]
    # the stray line belongs to the last message, whose broken segment quarantines it whole
    assert [(f["messages"], f["mapped"], f["quarantined"]) for f in files.values()] == [(3, 3, 0), (2, 1, 1)]
    assert len(_rows(region, "Observation")) == 4 and len(_rows(region, "Patient")) == 4
    assert sum(c.rows_read for c in report.counts if c.resource_type == "Observation") == 4
