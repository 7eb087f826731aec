"""The demo generator: dated relative to an evaluation day, otherwise the same region; a
region.yaml the onboarding guide's snippet can be appended to."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from hub.demo import generator as G
from hub.region import load_region

DAY = dt.date(2026, 11, 30)
FORMATS = (G.A_TS, G.A_DATE, G.B_TS, G.B_DATE, G.C_TS)
BIRTH_COLUMNS = {"birth_date", "CSRQ"}
DATE_COLUMNS = {"updated_at", "visit_time", "discharge_time", "diag_time", "rx_time", "order_time", "collect_time",
                "receive_time", "report_time", "result_time", "GXSJ", "JZSJ", "CYSJ", "ZDSJ", "KFSJ", "SQSJ", "CJSJ",
                "JSSJ", "BGSJ", "JYSJ", "XGSJ", "sample_time", "modify_time", "measure_time", "CLSJ"}  # every time the vendor schemas hold


def _as_date(value):
    if not isinstance(value, str):
        return None
    for fmt in FORMATS:
        try:
            return dt.datetime.strptime(value, fmt)
        except ValueError:
            continue
    return None


def _pairs(a: dict, b: dict):
    for inst in a:
        for schema in a[inst]:
            for table, rows in a[inst][schema].items():
                assert len(rows) == len(b[inst][schema][table]), (inst, table)
                for ra, rb in zip(rows, b[inst][schema][table], strict=True):
                    assert ra.keys() == rb.keys()
                    for col in ra:
                        yield table, col, ra[col], rb[col]


def test_only_dates_move_with_as_of_and_birth_dates_never():
    later = DAY + dt.timedelta(days=400)
    a, b = G.build_region(20, as_of=DAY), G.build_region(20, as_of=later)
    moved = 0
    for table, col, va, vb in _pairs(a, b):
        da, db = (_as_date(va), _as_date(vb)) if col in DATE_COLUMNS else (None, None)
        if da is None:
            assert va == vb, (table, col)  # people, codes, values, ids, birth dates (and resident ID numbers): the same
        else:
            assert db - da == dt.timedelta(days=400), (table, col, va, vb)
            moved += 1
    assert moved > 500


def test_the_latest_results_are_recent_and_none_is_in_the_future():
    data = G.build_region(30, as_of=DAY)
    times = [d for _, col, v, _ in _pairs(data, data) if col in DATE_COLUMNS and (d := _as_date(v))]
    end = dt.datetime.combine(DAY, dt.time())
    assert max(times) < end  # nothing after the evaluation day begins
    assert max(times) > end - dt.timedelta(days=G.LEAD_DAYS + 2)  # and the newest rows are about a week old
    assert min(times) >= end - dt.timedelta(days=G.SPAN_DAYS + G.LEAD_DAYS + 60)


def test_without_as_of_the_region_is_pinned_for_tests():
    data = G.build_region(5)
    assert G.start_of(None) == G.START and G.PINNED_AS_OF == dt.date(2025, 6, 26)
    patients = data["city-first"]["his_vendor_a"]["patient"]
    assert {p["updated_at"] for p in patients} == {"2023-01-01 00:00:00"}
    assert G.build_region(5) == data  # deterministic


def test_the_canary_has_an_hba1c_at_xihu_second_20_days_before_as_of():
    """The default demo (300 people) backs the `recognisable` example of docs/recognition.md."""
    lis = G.build_region(300, as_of=DAY)["xihu-second"]["lis_vendor_b"]
    his = G.build_region(300, as_of=DAY)["xihu-second"]["his_vendor_b"]
    (mrn,) = [p["BAH"] for p in his["T_BR_JBXX"] if p["XM"] == G.canary().name]
    orders = sorted((o["BGSJ"], o["ZHDM"]) for o in lis["LIS_SQD"] if o["BAH"] == mrn)
    latest_day = orders[-1][0][:8]
    assert latest_day == (DAY - dt.timedelta(days=G.CANARY_RECENT_DAYS["xihu-second"])).strftime("%Y%m%d")
    assert "Z01" in {code for when, code in orders if when.startswith(latest_day)}  # Z01: HbA1c


def test_the_onboarding_snippet_appends_a_fourth_institution(tmp_path: Path):
    G.generate_region(tmp_path, patients=2, as_of=DAY)
    guide = (Path(__file__).resolve().parents[2] / "docs" / "onboarding.md").read_text(encoding="utf-8")
    snippet = re.search(r"cat >> \.hub/region\.yaml <<'EOF'\n(.*?)\nEOF\n", guide, re.S).group(1)
    with (tmp_path / "region.yaml").open("a", encoding="utf-8") as f:
        f.write(snippet + "\n")
    region = load_region(tmp_path)
    assert [i.id for i in region.institutions] == ["city-first", "xihu-second", "beishan-chc", "xixi-chc"]
    assert [f.name for f in region.institution("xixi-chc").feeds] == ["his", "lis"]
    assert [f.name for f in region.institution("beishan-chc").feeds] == ["his", "lis"]  # not nested in the one above
