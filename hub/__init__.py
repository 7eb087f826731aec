"""hub: a regional health data interchange hub (HIS/LIS to a de-identified FHIR lakehouse)."""

__version__ = "0.1.0"
