"""Clinical content of the demo: lab items and panels, diagnoses, drugs, and vendor codes.

Each lab item has a canonical id, its LOINC code and UCUM unit, and per vendor the local
code, name and unit spelling the vendor uses (vendors differ, as real ones do).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LabItem:
    key: str
    name: str
    loinc: str
    loinc_display: str
    ucum: str | None
    ref: str  # reference range text as the lab prints it
    code_a: str
    code_b: str
    unit_a: str | None
    unit_b: str | None
    decimals: int


LAB_ITEMS = [
    LabItem("hba1c", "糖化血红蛋白", "4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", "4.0-6.0", "HBA1C", "2001", "%", "％", 1),
    LabItem("glu", "空腹血糖", "14771-0", "Fasting glucose [Moles/volume] in Serum or Plasma", "mmol/L", "3.9-6.1", "GLU", "2002", "mmol/L", "mmol/l", 2),
    LabItem("tc", "总胆固醇", "14647-2", "Cholesterol [Moles/volume] in Serum or Plasma", "mmol/L", "<5.2", "TC", "2003", "mmol/L", "mmol/l", 2),
    LabItem("tg", "甘油三酯", "14927-8", "Triglyceride [Moles/volume] in Serum or Plasma", "mmol/L", "<1.7", "TG", "2004", "mmol/L", "mmol/l", 2),
    LabItem("ldl", "低密度脂蛋白胆固醇", "22748-8", "Cholesterol in LDL [Moles/volume] in Serum or Plasma", "mmol/L", "<3.4", "LDL-C", "2005", "mmol/L", "mmol/l", 2),
    LabItem("hdl", "高密度脂蛋白胆固醇", "14646-4", "Cholesterol in HDL [Moles/volume] in Serum or Plasma", "mmol/L", ">1.0", "HDL-C", "2006", "mmol/L", "mmol/l", 2),
    LabItem("crea", "肌酐", "14682-9", "Creatinine [Moles/volume] in Serum or Plasma", "umol/L", "57-111", "CREA", "2007", "umol/L", "μmol/L", 0),
    LabItem("urea", "尿素", "22664-7", "Urea [Moles/volume] in Serum or Plasma", "mmol/L", "2.9-8.2", "UREA", "2008", "mmol/L", "mmol/l", 1),
    LabItem("k", "钾", "2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", "3.5-5.3", "K", "2009", "mmol/L", "mmol/l", 2),
    LabItem("na", "钠", "2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", "137-147", "NA", "2010", "mmol/L", "mmol/l", 1),
    LabItem("cl", "氯", "2075-0", "Chloride [Moles/volume] in Serum or Plasma", "mmol/L", "99-110", "CL", "2011", "mmol/L", "mmol/l", 1),
    LabItem("wbc", "白细胞计数", "6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*9/L", "3.5-9.5", "WBC", "3001", "10^9/L", "×10^9/L", 2),
    LabItem("rbc", "红细胞计数", "789-8", "Erythrocytes [#/volume] in Blood by Automated count", "10*12/L", "4.3-5.8", "RBC", "3002", "10^12/L", "×10^12/L", 2),
    LabItem("hgb", "血红蛋白", "718-7", "Hemoglobin [Mass/volume] in Blood", "g/L", "130-175", "HGB", "3003", "g/L", "g/l", 0),
    LabItem("plt", "血小板计数", "777-3", "Platelets [#/volume] in Blood by Automated count", "10*9/L", "125-350", "PLT", "3004", "10^9/L", "×10^9/L", 0),
    LabItem("upro", "尿蛋白", "2888-6", "Protein [Presence] in Urine", None, "阴性", "UPRO", "4001", None, None, 0),
    LabItem("crp", "C反应蛋白", "1988-5", "C reactive protein [Mass/volume] in Serum or Plasma", "mg/L", "0-10", "CRP", "4002", "mg/L", "mg/l", 1),
]
ITEMS = {i.key: i for i in LAB_ITEMS}


@dataclass(frozen=True)
class Panel:
    key: str
    name: str
    loinc: str
    loinc_display: str
    items: tuple[str, ...]
    specimen: str  # canonical specimen kind
    code_a: str
    code_b: str


PANELS = [
    Panel("hba1c", "糖化血红蛋白测定", "4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", ("hba1c",), "blood", "P-HBA1C", "Z01"),
    Panel("glu", "空腹血糖测定", "14771-0", "Fasting glucose [Moles/volume] in Serum or Plasma", ("glu",), "serum", "P-GLU", "Z02"),
    Panel("lipid", "血脂四项", "57698-3", "Lipid panel with direct LDL - Serum or Plasma", ("tc", "tg", "ldl", "hdl"), "serum", "P-LIPID", "Z03"),
    Panel("renal", "肾功能", "24362-6", "Renal function panel - Serum or Plasma", ("crea", "urea"), "serum", "P-RENAL", "Z04"),
    Panel("elec", "电解质", "24326-1", "Electrolytes 1998 panel - Serum or Plasma", ("k", "na", "cl"), "serum", "P-ELEC", "Z05"),
    Panel("cbc", "血常规", "58410-2", "CBC panel - Blood by Automated count", ("wbc", "rbc", "hgb", "plt"), "blood", "P-CBC", "Z06"),
    Panel("urine", "尿常规(尿蛋白)", "2888-6", "Protein [Presence] in Urine", ("upro",), "urine", "P-URINE", "Z07"),
    Panel("crp", "C反应蛋白测定", "1988-5", "C reactive protein [Mass/volume] in Serum or Plasma", ("crp",), "serum", "P-CRP", "Z08"),
]
PANEL_BY_KEY = {p.key: p for p in PANELS}

#: canonical specimen -> (vendor A text, vendor B text, SNOMED CT code, display)
SPECIMENS = {
    "serum": ("serum", "血清", "119364003", "Serum specimen"),
    "blood": ("whole blood", "全血", "258580003", "Whole blood specimen"),
    "urine": ("urine", "尿液", "122575003", "Urine specimen"),
}

#: ICD-10 code, Chinese name
DIAGNOSES = {
    "diabetes": ("E11.900", "2型糖尿病"),
    "hypertension": ("I10.x00", "原发性高血压"),
    "dyslipidaemia": ("E78.500", "高脂血症"),
    "ckd": ("N18.300", "慢性肾脏病3期"),
    "uri": ("J06.900", "急性上呼吸道感染"),
    "gastritis": ("K29.700", "胃炎"),
}

#: condition -> list of (drug code, name, dose, unit, frequency)
DRUGS = {
    "diabetes": [("X-A10BA02", "二甲双胍片", "0.5", "g", "TID"), ("X-A10AE04", "甘精胰岛素注射液", "10", "U", "QD")],
    "hypertension": [("X-C08CA01", "氨氯地平片", "5", "mg", "QD"), ("X-C09CA01", "氯沙坦钾片", "50", "mg", "QD")],
    "dyslipidaemia": [("X-C10AA05", "阿托伐他汀钙片", "20", "mg", "QN")],
    "uri": [("X-N02BE01", "对乙酰氨基酚片", "0.5", "g", "TID")],
    "gastritis": [("X-A02BC01", "奥美拉唑肠溶胶囊", "20", "mg", "BID")],
    "ckd": [("X-V03AE02", "司维拉姆片", "0.8", "g", "TID")],
}
