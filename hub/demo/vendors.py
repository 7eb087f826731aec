"""Two vendor schemas, as SQLAlchemy metadata: "Huaxin" (vendor A) and "Jiankang" (vendor B).

Vendor A uses English snake_case tables, ISO-like text dates, sex codes M/F/U, item codes
such as GLU and H/L flags. Vendor B uses pinyin-initial upper-case tables and columns
(T_BR_JBXX, XM, SFZH ...), compact dates (20240305083000), GB/T 2261.1 sex codes (1/2/9),
numeric item codes, unit spellings such as ×10^9/L and μmol/L, and ↑/↓ flags.
Both HIS record blood pressure taken at a visit (vendor A ``vital_sign`` with a unit column,
vendor B ``T_JZ_TZ`` 体征 with systolic 收缩压 SSY and diastolic 舒张压 SZY in mmHg, no unit).
"""

from __future__ import annotations

import sqlalchemy as sa

T, I = sa.Text, sa.Integer  # noqa: E741
K = sa.String(64)  # text keys: bounded so every database can index them


def his_a() -> sa.MetaData:
    md = sa.MetaData()
    sa.Table("hospital", md, sa.Column("hosp_code", K, primary_key=True), sa.Column("hosp_name", T), sa.Column("hosp_level", T))
    sa.Table(
        "patient", md, sa.Column("patient_id", I, primary_key=True), sa.Column("mrn", T, nullable=False),
        sa.Column("name", T), sa.Column("sex", T), sa.Column("birth_date", T), sa.Column("id_card_no", T),
        sa.Column("phone", T), sa.Column("address", T), sa.Column("updated_at", T),
    )
    sa.Table(
        "visit", md, sa.Column("visit_id", I, primary_key=True), sa.Column("visit_no", T), sa.Column("mrn", T),
        sa.Column("visit_type", T), sa.Column("dept_name", T), sa.Column("visit_time", T),
        sa.Column("discharge_time", T), sa.Column("updated_at", T),
    )
    sa.Table(
        "diagnosis", md, sa.Column("diag_id", I, primary_key=True), sa.Column("visit_id", I),
        sa.Column("icd10_code", T), sa.Column("diag_name", T), sa.Column("diag_time", T), sa.Column("note", T),
    )
    sa.Table(
        "prescription", md, sa.Column("rx_id", I, primary_key=True), sa.Column("visit_id", I),
        sa.Column("drug_code", T), sa.Column("drug_name", T), sa.Column("dose", T), sa.Column("dose_unit", T),
        sa.Column("freq_code", T), sa.Column("days", I), sa.Column("usage_note", T), sa.Column("rx_time", T),
    )
    sa.Table(
        "vital_sign", md, sa.Column("vital_id", I, primary_key=True), sa.Column("visit_id", I),
        sa.Column("measure_time", T), sa.Column("sbp", I), sa.Column("dbp", I), sa.Column("unit", T),
        sa.Column("updated_at", T),
    )
    return md


def lis_a() -> sa.MetaData:
    md = sa.MetaData()
    sa.Table(
        "lab_order", md, sa.Column("order_id", I, primary_key=True), sa.Column("barcode", T),
        sa.Column("patient_mrn", T), sa.Column("visit_no", T), sa.Column("panel_code", T), sa.Column("panel_name", T),
        sa.Column("order_time", T), sa.Column("specimen_type", T), sa.Column("collect_time", T),
        sa.Column("receive_time", T), sa.Column("report_time", T), sa.Column("status", T), sa.Column("updated_at", T),
    )
    sa.Table(
        "lab_result", md, sa.Column("result_id", I, primary_key=True), sa.Column("order_id", I),
        sa.Column("item_code", T), sa.Column("item_name", T), sa.Column("result_value", T), sa.Column("unit", T),
        sa.Column("ref_range", T), sa.Column("abnormal_flag", T), sa.Column("result_time", T), sa.Column("status", T),
        sa.Column("updated_at", T),
    )
    return md


def his_b() -> sa.MetaData:
    md = sa.MetaData()
    sa.Table("T_JG_YYXX", md, sa.Column("YYDM", K, primary_key=True), sa.Column("YYMC", T), sa.Column("YYDJ", T))
    sa.Table(
        "T_BR_JBXX", md, sa.Column("BRID", I, primary_key=True), sa.Column("BAH", T), sa.Column("XM", T),
        sa.Column("XB", T), sa.Column("CSRQ", T), sa.Column("SFZH", T), sa.Column("LXDH", T),
        sa.Column("JTZZ", T), sa.Column("HYZK", T), sa.Column("GXSJ", T),
    )
    sa.Table(
        "T_JZ_JZJL", md, sa.Column("JZID", I, primary_key=True), sa.Column("JZH", T), sa.Column("BRID", I),
        sa.Column("JZLX", T), sa.Column("KSMC", T), sa.Column("JZSJ", T), sa.Column("CYSJ", T),
    )
    sa.Table(
        "T_JZ_ZD", md, sa.Column("ZDID", I, primary_key=True), sa.Column("JZID", I), sa.Column("ZDDM", T),
        sa.Column("ZDMC", T), sa.Column("ZDSJ", T),
    )
    sa.Table(
        "T_JZ_CF", md, sa.Column("CFID", I, primary_key=True), sa.Column("JZID", I), sa.Column("YPDM", T),
        sa.Column("YPMC", T), sa.Column("JL", T), sa.Column("JLDW", T), sa.Column("PC", T), sa.Column("TS", I),
        sa.Column("KFSJ", T),
    )
    sa.Table(
        "T_JZ_TZ", md, sa.Column("TZID", I, primary_key=True), sa.Column("JZID", I), sa.Column("CLSJ", T),
        sa.Column("SSY", I), sa.Column("SZY", I),
    )
    return md


def lis_b() -> sa.MetaData:
    md = sa.MetaData()
    sa.Table(
        "LIS_SQD", md, sa.Column("SQDH", K, primary_key=True), sa.Column("TMH", T), sa.Column("BAH", T),
        sa.Column("JZH", T), sa.Column("ZHDM", T), sa.Column("ZHMC", T), sa.Column("SQSJ", T),
        sa.Column("BBLX", T), sa.Column("CJSJ", T), sa.Column("JSSJ", T), sa.Column("BGSJ", T), sa.Column("ZT", T),
    )
    sa.Table(
        "LIS_JG", md, sa.Column("JGID", I, primary_key=True), sa.Column("SQDH", T), sa.Column("XMDM", T),
        sa.Column("XMMC", T), sa.Column("JG", T), sa.Column("DW", T), sa.Column("CKFW", T), sa.Column("YCBZ", T),
        sa.Column("JYSJ", T), sa.Column("ZT", T), sa.Column("XGSJ", T),
    )
    return md


#: vendor C's wide table holds one column per lab item (the item dictionary is keyed by column name)
WIDE_ITEMS = ("GLU", "HBA1C", "TC", "TG", "LDL", "HDL", "CREA", "UREA", "K", "NA", "CL", "WBC", "RBC", "HGB", "PLT", "UPRO", "CRP")


def lis_c() -> sa.MetaData:
    """Vendor C ("Yunyi" cloud LIS): one wide row per report, an item dictionary, a generic lookup table."""
    md = sa.MetaData()
    sa.Table(
        "jy_report_wide", md, sa.Column("report_no", K, primary_key=True), sa.Column("patient_no", T),
        sa.Column("clinic_no", T), sa.Column("panel", T), sa.Column("sample_type", T), sa.Column("sample_time", T),
        sa.Column("report_time", T), sa.Column("state", T), sa.Column("modify_time", T),
        *[sa.Column(c, T) for c in WIDE_ITEMS],
    )
    sa.Table(
        "jy_item", md, sa.Column("col_name", K, primary_key=True), sa.Column("item_name", T), sa.Column("loinc", T),
        sa.Column("loinc_name", T), sa.Column("unit", T), sa.Column("ref_range", T),
    )
    sa.Table(
        "sys_dict", md, sa.Column("dict_type", K, primary_key=True), sa.Column("code", K, primary_key=True),
        sa.Column("name", T), sa.Column("std_code", T), sa.Column("std_name", T),
    )
    return md


SCHEMAS = {"his_vendor_a": his_a, "lis_vendor_a": lis_a, "his_vendor_b": his_b, "lis_vendor_b": lis_b, "lis_vendor_c": lis_c}
