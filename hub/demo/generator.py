"""Generates the demo region deterministically from a seed.

Three institutions (tertiary hospital, secondary hospital, community health centre), each
with an HIS and an LIS database in the workspace, written in two vendor schemas. A
chronic-disease heavy population (diabetes, hypertension) visits one to three of them;
the same person has a different MRN at each institution and the same resident ID number.
A few rows are deliberately bad (unparseable date, unknown item code, missing patient) so
that quarantine has something to explain.

Care works: at each institution a managed patient's HbA1c, LDL-C and blood pressure improve
with time under care there (months since the first visit, full effect after
CARE_FULL_MONTHS), so the guideline indicators (hub.trainset.indicators) show a trend.
Blood pressure taken at visits is drawn from its own random stream (seeded from the seed and
the institution), and the lab improvement is a deterministic shift of the drawn values, so
the people, visits, orders and counts of the other tables are what they were before blood
pressure was added.

Dates are relative to an evaluation day ``as_of``: visits span SPAN_DAYS days ending LEAD_DAYS
before it, so `hub demo` (as_of = today) publishes recent results and the documented
recognition examples work. The seed alone decides people, counts, codes and values; as_of
only moves dates (birth dates and resident ID numbers never move). Without as_of the
library generates the region as of PINNED_AS_OF, which tests rely on to stay deterministic.
Given an as_of, the planted canary patient's visits at each institution are also moved so
its latest one there is CANARY_RECENT_DAYS[institution] days old (its HbA1c at xihu-second
about 20 days old: the `recognisable` example of docs/recognition.md).
"""

from __future__ import annotations

import datetime as dt
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
import yaml
from faker import Faker

from hub.demo import content as C
from hub.demo import vendors
from hub.identifiers import resident_id_check_char
from hub.lineage.signing import DEMO_KEY_NAME, DEMO_TRUSTED_NAME, ensure_demo_keys

DEFAULT_SEED = 20261122
START = dt.datetime(2023, 1, 1)  # the first visit day as of PINNED_AS_OF
SPAN_DAYS = 900
LEAD_DAYS = 7  # the last visits are at least this many days before as_of
PINNED_AS_OF = (START + dt.timedelta(days=SPAN_DAYS + LEAD_DAYS)).date()
CANARY_RECENT_DAYS = {"city-first": 35, "xihu-second": 20, "beishan-chc": 13}  # >= 13: a 12-day stay ends before as_of

DISTRICTS = [("330102", "上城区"), ("330105", "拱墅区"), ("330106", "西湖区"), ("330108", "滨江区"), ("330109", "萧山区"), ("330110", "余杭区")]
OTHER_BIRTHPLACES = ["340104", "410102", "360102", "320102", "430102"]
STREETS = ["文三路", "教工路", "莫干山路", "延安路", "凤起路", "庆春路", "天目山路", "江南大道", "解放路", "湖墅南路"]
DEPTS = ["内分泌科", "心血管内科", "肾内科", "全科", "普通内科", "呼吸内科", "消化内科"]


@dataclass(frozen=True)
class DemoInstitution:
    id: str
    name: str
    level: str
    org_code: str
    his: str
    lis: str
    share: float  # probability a person is registered here


INSTITUTIONS = [
    DemoInstitution("city-first", "杭州市第一人民医院", "tertiary hospital", "47000001-3", "his_vendor_a", "lis_vendor_a", 0.55),
    DemoInstitution("xihu-second", "西湖区第二人民医院", "secondary hospital", "47000002-1", "his_vendor_b", "lis_vendor_b", 0.5),
    DemoInstitution("beishan-chc", "北山街道社区卫生服务中心", "community health centre", "47000003-X", "his_vendor_b", "lis_vendor_a", 0.7),
]


@dataclass
class Person:
    id_number: str | None
    name: str
    sex: str  # male | female
    birth: dt.date
    phone: str
    address: str
    conditions: set[str]


@dataclass
class Order:
    panel: C.Panel
    order_time: dt.datetime
    collect: dt.datetime
    receive: dt.datetime
    report: dt.datetime
    status: str  # final | preliminary | corrected
    results: list[tuple[C.LabItem, str, str]] = field(default_factory=list)  # item, value text, flag H/L/N/""


@dataclass
class Visit:
    kind: str  # outpatient | inpatient | emergency
    dept: str
    time: dt.datetime
    discharge: dt.datetime | None
    diagnoses: list[str]
    drugs: list[tuple[str, str, str, str, str]]
    orders: list[Order]
    bp: tuple[int, int, int] | None = None  # blood pressure taken: (minutes after the visit starts, systolic, diastolic)


def _person(rng: random.Random, fake: Faker) -> Person:
    sex = rng.choice(["male", "female"])
    year = min(2005, max(1930, int(rng.triangular(1930, 2005, 1958))))
    birth = dt.date(year, 1, 1) + dt.timedelta(days=rng.randrange(365))
    district_code, district = rng.choice(DISTRICTS)
    region = district_code if rng.random() < 0.8 else rng.choice(OTHER_BIRTHPLACES)
    seq = rng.randrange(0, 500) * 2 + (1 if sex == "male" else 0)
    first17 = f"{region}{birth:%Y%m%d}{seq:03d}"
    id_number: str | None = first17 + resident_id_check_char(first17)
    if rng.random() < 0.04:
        id_number = None  # no ID number on file (foreign national, newborn record ...)
    elif id_number.endswith("X") and rng.random() < 0.5:
        id_number = id_number[:-1] + "x"  # lower-case check character, as some HIS store it
    conditions = set()
    age = 2024 - year
    if rng.random() < (0.35 if age > 45 else 0.1):
        conditions.add("diabetes")
    if rng.random() < (0.5 if age > 45 else 0.12):
        conditions.add("hypertension")
    if rng.random() < 0.3:
        conditions.add("dyslipidaemia")
    if "diabetes" in conditions and rng.random() < 0.2:
        conditions.add("ckd")
    address = f"浙江省杭州市{district}{rng.choice(STREETS)}{rng.randrange(1, 400)}号{rng.randrange(1, 30)}幢{rng.randrange(1, 6)}单元{rng.randrange(1, 30)}{rng.randrange(1, 5):02d}室"
    return Person(id_number, fake.name_male() if sex == "male" else fake.name_female(), sex, birth, fake.phone_number(), address, conditions)


def canary() -> Person:
    """A synthetic patient planted at every institution: if any of its values is ever found in
    published data or logs, de-identification has failed (the leak scan looks for them)."""
    first17 = "33010619800101998"  # even sequence: female
    return Person(first17 + resident_id_check_char(first17), "金丝雀", "female", dt.date(1980, 1, 1),
                  "13000000013", "浙江省杭州市西湖区金丝雀路1号", {"diabetes", "hypertension"})


def _value(rng: random.Random, item: C.LabItem, p: Person) -> tuple[str, str]:
    dm, ckd = "diabetes" in p.conditions, "ckd" in p.conditions
    lipid = "dyslipidaemia" in p.conditions
    if item.key == "upro":
        if ckd or (dm and rng.random() < 0.2):
            return rng.choice(["1+", "2+", "±"]), "H"
        return "阴性", ""
    if item.key == "crp" and rng.random() < 0.3:
        return "<0.5", ""
    means = {
        "hba1c": (7.8 if dm else 5.4, 1.2 if dm else 0.35), "glu": (8.4 if dm else 5.1, 2.0 if dm else 0.5),
        "tc": (5.8 if lipid else 4.6, 0.8), "tg": (2.3 if lipid else 1.3, 0.6), "ldl": (3.8 if lipid else 2.7, 0.7),
        "hdl": (1.1, 0.25), "crea": (150 if ckd else 78, 35 if ckd else 14), "urea": (9.5 if ckd else 5.2, 1.5),
        "k": (4.3, 0.4), "na": (141, 2.5), "cl": (104, 2.5), "wbc": (6.4, 1.6), "rbc": (4.7, 0.45),
        "hgb": (138, 14), "plt": (230, 55), "crp": (4.0, 5.0),
    }
    mu, sd = means[item.key]
    v = max(0.1, rng.gauss(mu, sd))
    text = f"{v:.{item.decimals}f}"
    low, high = _bounds(item.ref)
    flag = "H" if high is not None and float(text) > high else "L" if low is not None and float(text) < low else ""
    return text, flag


CARE_FULL_MONTHS = 12  # months under care after which the improvement is complete
#: lab item -> (conditions any of which put the patient on treatment for it, full improvement)
CARE_LAB_EFFECT = {"hba1c": ({"diabetes"}, 1.3), "ldl": ({"diabetes", "hypertension", "dyslipidaemia"}, 0.7)}


def _bp_draw(rng: random.Random, p: Person, care: float) -> tuple[int, int]:
    """Systolic and diastolic (mmHg) of a person after `care` (0..1) of the full improvement."""
    htn, dm = "hypertension" in p.conditions, "diabetes" in p.conditions
    (ms, ss, ds), (md, sd, dd) = ((152, 12, 18), (94, 8, 10)) if htn else ((134, 10, 6), (83, 7, 4)) if dm else ((122, 10, 0), (76, 7, 0))
    z1, z2 = rng.gauss(0, 1), rng.gauss(0, 1)
    systolic = ms - ds * care + ss * z1
    diastolic = md - dd * care + sd * (0.6 * z1 + 0.8 * z2)  # the two correlate, as they do
    return int(round(min(230, max(85, systolic)))), int(round(min(130, max(45, diastolic))))


def _under_care(visits: list[Visit], p: Person, rng: random.Random) -> None:
    """Improve lab values with time under care (no random draw) and take blood pressure (draws from rng)."""
    if not visits:
        return
    first = visits[0].time
    measured = 0.9 if p.conditions & {"diabetes", "hypertension"} else 0.4
    for v in visits:
        care = min(1.0, (v.time - first).days / 30.44 / CARE_FULL_MONTHS)
        for o in v.orders:
            for i, (item, text, flag) in enumerate(o.results):
                effect = CARE_LAB_EFFECT.get(item.key)
                if effect is None or not p.conditions & effect[0] or care == 0:
                    continue
                value = f"{max(0.1, float(text) - effect[1] * care):.{item.decimals}f}"
                low, high = _bounds(item.ref)
                flag = "H" if high is not None and float(value) > high else "L" if low is not None and float(value) < low else ""
                o.results[i] = (item, value, flag)
        if rng.random() < measured:
            v.bp = (rng.randint(2, 20), *_bp_draw(rng, p, care))


def _bounds(ref: str) -> tuple[float | None, float | None]:
    if "-" in ref:
        a, b = ref.split("-")
        return float(a), float(b)
    if ref.startswith("<"):
        return None, float(ref[1:])
    if ref.startswith(">"):
        return float(ref[1:]), None
    return None, None


def start_of(as_of: dt.date | None) -> dt.datetime:
    """The first possible visit day of a region generated as of as_of (None: PINNED_AS_OF)."""
    return START + dt.timedelta(days=((as_of or PINNED_AS_OF) - PINNED_AS_OF).days)


def _moved(text: str, fmt: str, start: dt.datetime) -> str:
    """A fixed date written for PINNED_AS_OF, moved with the region's start."""
    return (dt.datetime.strptime(text, fmt) + (start - START)).strftime(fmt)


def _shift_visits(visits: list[Visit], days: int) -> None:
    delta = dt.timedelta(days=days)
    for v in visits:
        v.time += delta
        v.discharge = v.discharge + delta if v.discharge else None
        for o in v.orders:
            o.order_time, o.collect, o.receive, o.report = (o.order_time + delta, o.collect + delta, o.receive + delta,
                                                            o.report + delta)


def _visits(rng: random.Random, p: Person, start: dt.datetime = START) -> list[Visit]:
    out = []
    for _ in range(rng.randint(1, 5)):
        t = start + dt.timedelta(days=rng.randrange(SPAN_DAYS), minutes=rng.randrange(7 * 60, 17 * 60))
        kind = rng.choices(["outpatient", "inpatient", "emergency"], [0.85, 0.1, 0.05])[0]
        discharge = t + dt.timedelta(days=rng.randint(3, 12)) if kind == "inpatient" else None
        diags = sorted(p.conditions)[:2] or [rng.choice(["uri", "gastritis"])]
        if rng.random() < 0.1:
            diags.append(rng.choice(["uri", "gastritis"]))
        drugs = [rng.choice(C.DRUGS[d]) for d in diags if d in C.DRUGS and rng.random() < 0.8]
        panels = []
        if "diabetes" in p.conditions:
            panels += ["hba1c", "glu"]
        if "hypertension" in p.conditions or "dyslipidaemia" in p.conditions:
            panels += ["lipid", "elec"]
        if "ckd" in p.conditions:
            panels += ["renal", "urine"]
        panels += ["cbc"] if rng.random() < 0.5 else []
        panels += ["crp"] if "uri" in diags else []
        panels = [k for k in panels if rng.random() < 0.6] or [rng.choice(["cbc", "glu"])]
        orders = []
        for k in panels:
            panel = C.PANEL_BY_KEY[k]
            collect = t + dt.timedelta(minutes=rng.randint(10, 90))
            receive = collect + dt.timedelta(minutes=rng.randint(5, 60))
            report = receive + dt.timedelta(minutes=rng.randint(30, 240))
            status = rng.choices(["final", "preliminary", "corrected"], [0.96, 0.025, 0.015])[0]
            order = Order(panel, t, collect, receive, report, status)
            for key in panel.items:
                item = C.ITEMS[key]
                order.results.append((item, *_value(rng, item, p)))
            orders.append(order)
        out.append(Visit(kind, rng.choice(DEPTS), t, discharge, diags, drugs, orders))
    return sorted(out, key=lambda v: v.time)


# ---- vendor renderers ------------------------------------------------------------------

_SEX_A = {"male": "M", "female": "F"}
_SEX_B = {"male": "1", "female": "2"}
_VISIT_A = {"outpatient": "O", "inpatient": "I", "emergency": "E"}
_VISIT_B = {"outpatient": "1", "inpatient": "3", "emergency": "2"}
_STATUS_A = {"final": "F", "preliminary": "P", "corrected": "C"}
_STATUS_B = {"final": "2", "preliminary": "1", "corrected": "3"}
_FLAG_B = {"H": "↑", "L": "↓", "": ""}
A_TS, A_DATE = "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"
B_TS, B_DATE = "%Y%m%d%H%M%S", "%Y%m%d"


class _Rows(dict):
    def add(self, table: str, row: dict) -> None:
        self.setdefault(table, []).append(row)


def _render_his_a(inst: DemoInstitution, enrolled: list[tuple[Person, str, list[Visit]]], rng: random.Random,
                  start: dt.datetime = START) -> _Rows:
    rows = _Rows()
    rows.add("hospital", {"hosp_code": inst.org_code, "hosp_name": inst.name, "hosp_level": inst.level})
    visit_id = diag_id = rx_id = vital_id = 0
    for pid, (p, mrn, visits) in enumerate(enrolled, start=1):
        rows.add("patient", {
            "patient_id": pid, "mrn": mrn, "name": p.name, "sex": _SEX_A[p.sex], "birth_date": p.birth.strftime(A_DATE),
            "id_card_no": p.id_number, "phone": p.phone, "address": p.address, "updated_at": start.strftime(A_TS),
        })
        for v in visits:
            visit_id += 1
            vt = v.time.strftime(A_TS)
            rows.add("visit", {
                "visit_id": visit_id, "visit_no": f"V{visit_id:08d}", "mrn": mrn, "visit_type": _VISIT_A[v.kind],
                "dept_name": v.dept, "visit_time": vt, "discharge_time": v.discharge.strftime(A_TS) if v.discharge else None,
                "updated_at": vt,
            })
            for d in v.diagnoses:
                diag_id += 1
                code, name = C.DIAGNOSES[d]
                rows.add("diagnosis", {"diag_id": diag_id, "visit_id": visit_id, "icd10_code": code, "diag_name": name, "diag_time": vt, "note": None})
            for code, name, dose, unit, freq in v.drugs:
                rx_id += 1
                rows.add("prescription", {
                    "rx_id": rx_id, "visit_id": visit_id, "drug_code": code, "drug_name": name, "dose": dose,
                    "dose_unit": unit, "freq_code": freq, "days": rng.choice([7, 14, 30]), "usage_note": "遵医嘱 口服", "rx_time": vt,
                })
            if v.bp is not None:
                vital_id += 1
                mt = (v.time + dt.timedelta(minutes=v.bp[0])).strftime(A_TS)
                rows.add("vital_sign", {"vital_id": vital_id, "visit_id": visit_id, "measure_time": mt, "sbp": v.bp[1],
                                        "dbp": v.bp[2], "unit": "mmHg", "updated_at": mt})
    return rows


def _render_his_b(inst: DemoInstitution, enrolled: list[tuple[Person, str, list[Visit]]], rng: random.Random,
                  start: dt.datetime = START) -> _Rows:
    rows = _Rows()
    rows.add("T_JG_YYXX", {"YYDM": inst.org_code, "YYMC": inst.name, "YYDJ": inst.level})
    visit_id = diag_id = rx_id = vital_id = 0
    for brid, (p, mrn, visits) in enumerate(enrolled, start=1):
        rows.add("T_BR_JBXX", {
            "BRID": brid, "BAH": mrn, "XM": p.name, "XB": _SEX_B[p.sex], "CSRQ": p.birth.strftime(B_DATE),
            "SFZH": p.id_number, "LXDH": p.phone, "JTZZ": p.address, "HYZK": rng.choice(["10", "20", "20", "20", "40"]),
            "GXSJ": start.strftime(B_TS),
        })
        for v in visits:
            visit_id += 1
            vt = v.time.strftime(B_TS)
            rows.add("T_JZ_JZJL", {
                "JZID": visit_id, "JZH": f"{inst.id[:2].upper()}{visit_id:09d}", "BRID": brid, "JZLX": _VISIT_B[v.kind],
                "KSMC": v.dept, "JZSJ": vt, "CYSJ": v.discharge.strftime(B_TS) if v.discharge else None,
            })
            for d in v.diagnoses:
                diag_id += 1
                code, name = C.DIAGNOSES[d]
                rows.add("T_JZ_ZD", {"ZDID": diag_id, "JZID": visit_id, "ZDDM": code, "ZDMC": name, "ZDSJ": vt})
            for code, name, dose, unit, freq in v.drugs:
                rx_id += 1
                rows.add("T_JZ_CF", {
                    "CFID": rx_id, "JZID": visit_id, "YPDM": code, "YPMC": name, "JL": dose,
                    "JLDW": "IU" if unit == "U" else unit, "PC": freq.lower(), "TS": rng.choice([7, 14, 30]), "KFSJ": vt,
                })
            if v.bp is not None:
                vital_id += 1
                rows.add("T_JZ_TZ", {"TZID": vital_id, "JZID": visit_id, "CLSJ": (v.time + dt.timedelta(minutes=v.bp[0])).strftime(B_TS),
                                     "SSY": v.bp[1], "SZY": v.bp[2]})
    return rows


def _visit_number(inst: DemoInstitution, his: str, index: int) -> str:
    return f"V{index:08d}" if his == "his_vendor_a" else f"{inst.id[:2].upper()}{index:09d}"


def _render_lis_a(inst: DemoInstitution, enrolled, rng: random.Random, start: dt.datetime = START) -> _Rows:
    rows = _Rows()
    order_id = result_id = visit_index = 0
    for _p, mrn, visits in enrolled:
        for v in visits:
            visit_index += 1
            for o in v.orders:
                order_id += 1
                spec = C.SPECIMENS[o.panel.specimen]
                rows.add("lab_order", {
                    "order_id": order_id, "barcode": f"{order_id:012d}", "patient_mrn": mrn,
                    "visit_no": _visit_number(inst, inst.his, visit_index), "panel_code": o.panel.code_a, "panel_name": o.panel.name,
                    "order_time": o.order_time.strftime(A_TS), "specimen_type": spec[0], "collect_time": o.collect.strftime(A_TS),
                    "receive_time": o.receive.strftime(A_TS), "report_time": o.report.strftime(A_TS), "status": _STATUS_A[o.status],
                    "updated_at": o.report.strftime(A_TS),
                })
                for item, value, flag in o.results:
                    result_id += 1
                    rows.add("lab_result", {
                        "result_id": result_id, "order_id": order_id, "item_code": item.code_a, "item_name": item.name,
                        "result_value": value, "unit": item.unit_a, "ref_range": item.ref, "abnormal_flag": flag or "N",
                        "result_time": o.report.strftime(A_TS), "status": _STATUS_A[o.status], "updated_at": o.report.strftime(A_TS),
                    })
    _bad_lis_a(rows, rng, order_id, result_id, start)
    return rows


def _bad_lis_a(rows: _Rows, rng: random.Random, order_id: int, result_id: int, start: dt.datetime = START) -> None:
    """Deliberately bad rows: an unparseable date, an unknown item code, a missing patient."""
    results = rows.get("lab_result", [])
    if len(results) >= 3:
        results[1]["result_time"] = "2024-02-30 25:61:00"
        results[2]["item_code"] = "XYZ99"
    order_id += 1
    t = {k: _moved(f"2024-05-06 {hm}:00", A_TS, start) for k, hm in (("order", "08:00"), ("collect", "08:10"), ("receive", "08:30"), ("report", "10:00"))}
    rows.add("lab_order", {
        "order_id": order_id, "barcode": f"{order_id:012d}", "patient_mrn": "M99999999", "visit_no": None,
        "panel_code": "P-GLU", "panel_name": "空腹血糖测定", "order_time": t["order"], "specimen_type": "serum",
        "collect_time": t["collect"], "receive_time": t["receive"], "report_time": t["report"], "status": "F",
        "updated_at": t["report"],
    })
    rows.add("lab_result", {
        "result_id": result_id + 1, "order_id": order_id, "item_code": "GLU", "item_name": "空腹血糖", "result_value": "5.60",
        "unit": "mmol/L", "ref_range": "3.9-6.1", "abnormal_flag": "N", "result_time": t["report"], "status": "F",
        "updated_at": t["report"],
    })


def _render_lis_b(inst: DemoInstitution, enrolled, rng: random.Random, start: dt.datetime = START) -> _Rows:
    rows = _Rows()
    order_id = result_id = visit_index = 0
    for _p, mrn, visits in enrolled:
        for v in visits:
            visit_index += 1
            for o in v.orders:
                order_id += 1
                sqdh = f"SQ{order_id:010d}"
                rows.add("LIS_SQD", {
                    "SQDH": sqdh, "TMH": f"T{order_id:011d}", "BAH": mrn, "JZH": _visit_number(inst, inst.his, visit_index),
                    "ZHDM": o.panel.code_b, "ZHMC": o.panel.name, "SQSJ": o.order_time.strftime(B_TS),
                    "BBLX": C.SPECIMENS[o.panel.specimen][1], "CJSJ": o.collect.strftime(B_TS), "JSSJ": o.receive.strftime(B_TS),
                    "BGSJ": o.report.strftime(B_TS), "ZT": _STATUS_B[o.status],
                })
                for item, value, flag in o.results:
                    result_id += 1
                    rows.add("LIS_JG", {
                        "JGID": result_id, "SQDH": sqdh, "XMDM": item.code_b, "XMMC": item.name, "JG": value,
                        "DW": item.unit_b, "CKFW": item.ref.replace("-", "~"), "YCBZ": _FLAG_B[flag],
                        "JYSJ": o.report.strftime(B_TS), "ZT": _STATUS_B[o.status], "XGSJ": o.report.strftime(B_TS),
                    })
    results = rows.get("LIS_JG", [])
    if len(results) >= 3:
        results[1]["JYSJ"] = "20241345996100"
        results[2]["XMDM"] = "9999"
    order_id += 1
    sqdh = f"SQ{order_id:010d}"
    t = {k: _moved(f"20240506{hm}00", B_TS, start) for k, hm in (("order", "0800"), ("collect", "0810"), ("receive", "0830"), ("report", "1000"))}
    rows.add("LIS_SQD", {
        "SQDH": sqdh, "TMH": f"T{order_id:011d}", "BAH": "BA9999999", "JZH": None, "ZHDM": "Z02", "ZHMC": "空腹血糖测定",
        "SQSJ": t["order"], "BBLX": "血清", "CJSJ": t["collect"], "JSSJ": t["receive"], "BGSJ": t["report"], "ZT": "2",
    })
    rows.add("LIS_JG", {
        "JGID": result_id + 1, "SQDH": sqdh, "XMDM": "2002", "XMMC": "空腹血糖", "JG": "5.60", "DW": "mmol/l",
        "CKFW": "3.9~6.1", "YCBZ": "", "JYSJ": t["report"], "ZT": "2", "XGSJ": t["report"],
    })
    return rows


C_TS = "%Y年%m月%d日 %H时%M分"
_STATE_C = {"final": "2", "preliminary": "1", "corrected": "3"}
_SAMPLE_C = {"serum": "01", "blood": "02", "urine": "03"}


def _render_lis_c(inst: DemoInstitution, enrolled, rng: random.Random, start: dt.datetime = START) -> _Rows:
    """Vendor C: one wide row per report; the dictionary gives CRP no LOINC (a gap to find and fix)."""
    rows = _Rows()
    for item in C.LAB_ITEMS:
        col = vendors.WIDE_ITEMS[C.LAB_ITEMS.index(item)]
        rows.add("jy_item", {
            "col_name": col, "item_name": item.name, "loinc": None if item.key == "crp" else item.loinc,
            "loinc_name": None if item.key == "crp" else item.loinc_display, "unit": item.unit_a, "ref_range": item.ref,
        })
    for kind, code in _SAMPLE_C.items():
        _, text, sct, display = C.SPECIMENS[kind]
        rows.add("sys_dict", {"dict_type": "SAMPLE", "code": code, "name": text, "std_code": sct, "std_name": display})
    for status, code in _STATE_C.items():
        rows.add("sys_dict", {"dict_type": "STATE", "code": code, "name": status, "std_code": status, "std_name": None})
    for panel in C.PANELS:
        rows.add("sys_dict", {"dict_type": "PANEL", "code": panel.code_b, "name": panel.name, "std_code": panel.loinc, "std_name": panel.loinc_display})
    report = visit_index = 0
    for _p, mrn, visits in enrolled:
        for v in visits:
            visit_index += 1
            for o in v.orders:
                report += 1
                wide = {c: None for c in vendors.WIDE_ITEMS}
                for item, value, _flag in o.results:
                    wide[vendors.WIDE_ITEMS[C.LAB_ITEMS.index(item)]] = value
                rows.add("jy_report_wide", {
                    "report_no": f"R{report:08d}", "patient_no": mrn, "clinic_no": _visit_number(inst, inst.his, visit_index),
                    "panel": o.panel.code_b, "sample_type": _SAMPLE_C[o.panel.specimen], "sample_time": o.collect.strftime(C_TS),
                    "report_time": o.report.strftime(C_TS), "state": _STATE_C[o.status], "modify_time": o.report.strftime(A_TS),
                    **wide,
                })
    return rows


_RENDER = {
    "his_vendor_a": _render_his_a, "his_vendor_b": _render_his_b,
    "lis_vendor_a": _render_lis_a, "lis_vendor_b": _render_lis_b, "lis_vendor_c": _render_lis_c,
}

#: An institution the demo writes sources for but does not register: the onboarding exercise.
ONBOARDING = DemoInstitution("xixi-chc", "西溪街道社区卫生服务中心", "community health centre", "47000004-8", "his_vendor_a", "lis_vendor_c", 0.4)


def write_database(url: str, schema: str, rows: dict[str, list[dict]]) -> None:
    """Create a vendor schema at url (any SQLAlchemy database) and load rows into it."""
    engine = sa.create_engine(url)
    md = vendors.SCHEMAS[schema]()
    md.drop_all(engine)
    md.create_all(engine)
    with engine.begin() as conn:
        for name, table_rows in rows.items():
            for i in range(0, len(table_rows), 10_000):
                conn.execute(md.tables[name].insert(), table_rows[i : i + 10_000])
    engine.dispose()


def build_region(patients: int, seed: int = DEFAULT_SEED, as_of: dt.date | None = None) -> dict[str, dict[str, dict[str, list[dict]]]]:
    """All source rows of the demo region: {institution: {mapping: {table: rows}}}, dated as of as_of (None: PINNED_AS_OF)."""
    start = start_of(as_of)
    rng = random.Random(seed)
    fake = Faker("zh_CN")
    fake.seed_instance(seed)
    people = [_person(rng, fake) for _ in range(patients)]
    memberships = []
    for _ in people:
        chosen = {inst.id for inst in INSTITUTIONS if rng.random() < inst.share}
        memberships.append(chosen or {INSTITUTIONS[-1].id})  # everyone has a community centre
    people.append(canary())
    memberships.append({inst.id for inst in INSTITUTIONS})
    out: dict[str, dict[str, dict[str, list[dict]]]] = {}
    for n, inst in enumerate(INSTITUTIONS):
        irng = random.Random(seed * 31 + n)
        vrng = random.Random(f"{seed}:vital-signs:{inst.id}")  # its own stream: irng's draws stay as they were
        prefix = "M" if inst.his == "his_vendor_a" else "BA"
        enrolled = []
        for p, member in zip(people, memberships, strict=True):
            if inst.id in member:
                mrn = f"{prefix}{(n + 1) * 1_000_000 + len(enrolled) + 1:07d}"
                visits = _visits(irng, p, start)
                _under_care(visits, p, vrng)
                enrolled.append((p, mrn, visits))
        if as_of is not None:  # the canary's latest visit here is recent (docs/recognition.md's example)
            visits = enrolled[-1][2]  # the canary is the last person, and member everywhere
            target = dt.datetime.combine(as_of - dt.timedelta(days=CANARY_RECENT_DAYS[inst.id]), visits[-1].time.time())
            _shift_visits(visits, (target - visits[-1].time).days)
        out[inst.id] = {
            inst.his: _RENDER[inst.his](inst, enrolled, irng, start),
            inst.lis: _RENDER[inst.lis](inst, enrolled, irng, start),
        }
    return out


def generate_onboarding_sources(workspace: Path, patients: int = 300, seed: int = DEFAULT_SEED,
                                as_of: dt.date | None = None) -> dict[str, str]:
    """Write the unregistered institution's HIS (vendor A) and LIS (vendor C) databases; return their URLs."""
    start = start_of(as_of)
    rng = random.Random(seed * 97)
    fake = Faker("zh_CN")
    fake.seed_instance(seed * 97)
    inst = ONBOARDING
    enrolled = [(p, f"M{4_000_000 + i + 1:07d}", _visits(rng, p, start)) for i, p in enumerate(_person(rng, fake) for _ in range(max(1, patients // 4)))]
    folder = Path(workspace) / "sources" / "onboarding"
    folder.mkdir(parents=True, exist_ok=True)
    urls = {}
    for system, schema in (("his", inst.his), ("lis", inst.lis)):
        db = folder / f"{inst.id}-{system}.db"
        urls[system] = f"sqlite:///{db.resolve()}"
        write_database(urls[system], schema, _RENDER[schema](inst, enrolled, rng, start))
    return urls


class _IndentedDumper(yaml.SafeDumper):
    """Indents list items under their key (``institutions:\n  - id: ...``), as the docs' snippets do."""

    def increase_indent(self, flow: bool = False, indentless: bool = False):
        return super().increase_indent(flow, False)


def generate_region(workspace: Path, patients: int = 300, seed: int = DEFAULT_SEED,
                    as_of: dt.date | None = None, file_feeds: bool = False) -> dict[str, dict[str, int]]:
    """Write the demo source databases and region.yaml into workspace, dated as of as_of
    (None: PINNED_AS_OF; `hub demo` passes today); return row counts. file_feeds: also the
    institutions that send HL7 v2 and export FHIR NDJSON (hub.demo.file_feeds; `hub demo` adds them)."""
    workspace = Path(workspace)
    workspace.mkdir(mode=0o700, parents=True, exist_ok=True)
    workspace.chmod(0o700)  # the workspace holds identifiable sources, the catalog and keys: its owner's alone
    (workspace / "sources").mkdir(parents=True, exist_ok=True)
    data = build_region(patients, seed, as_of)
    counts: dict[str, dict[str, int]] = {}
    region = {"region": "demo-city", "institutions": []}
    for inst in INSTITUTIONS:
        feeds = []
        for system, schema in (("his", inst.his), ("lis", inst.lis)):
            db = workspace / "sources" / f"{inst.id}-{system}.db"
            write_database(f"sqlite:///{db.resolve()}", schema, data[inst.id][schema])
            counts[f"{inst.id}/{system}"] = {t: len(r) for t, r in data[inst.id][schema].items()}
            feeds.append({"name": system, "mapping": schema, "url": f"sqlite:///{{workspace}}/sources/{db.name}"})
        region["institutions"].append({"id": inst.id, "name": inst.name, "level": inst.level, "feeds": feeds})
    if file_feeds:
        from hub.demo.file_feeds import generate_file_feeds

        rng = random.Random(seed)  # the same people build_region made first (same seed, same draws)
        fake = Faker("zh_CN")
        fake.seed_instance(seed)
        people = [_person(rng, fake) for _ in range(patients)]
        entries, file_counts = generate_file_feeds(workspace, people, _visits, seed, start_of(as_of))
        region["institutions"] += entries
        counts.update(file_counts)
    c = canary()
    mrns = sorted({row.get("mrn") or row.get("BAH") for tables in data.values() for rows in tables.values()
                   for table in ("patient", "T_BR_JBXX") for row in rows.get(table, []) if row.get("name", row.get("XM")) == c.name})
    (workspace / "canary.json").write_text(json.dumps({
        "note": "synthetic canary patient planted by hub demo at every institution; none of these values may appear "
                "in published data or logs (the leak scan fails on any of them)",
        "values": [c.name, c.id_number, c.phone, c.address, *mrns],
    }, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    ensure_demo_keys(workspace)  # demo only: in production the signing key lives outside the workspace
    region = {"region": region["region"], "signing_key_file": "{workspace}/keys/" + DEMO_KEY_NAME,
              "trusted_keys_file": "{workspace}/keys/" + DEMO_TRUSTED_NAME,
              "institutions": region["institutions"]}  # last, so a new institution can be appended to the file
    (workspace / "region.yaml").write_text(
        "# Demo region written by `hub demo`. Feed URLs may use {workspace} and ${ENV_VAR}.\n"
        "# signing_key_file is inside the workspace for the demo only: see docs/lakehouse.md, Tamper evidence.\n"
        + yaml.dump(region, Dumper=_IndentedDumper, allow_unicode=True, sort_keys=False),
        encoding="utf-8",
    )
    return counts
