"""hub: a regional health data interchange hub (HIS/LIS to a de-identified FHIR lakehouse)."""

from hub.compiled import install_guard

__version__ = "0.1.0"

install_guard()  # a compiled module is used only while it matches its source (hub/compiled.py)
