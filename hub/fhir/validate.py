"""Validation of resource dicts against the FHIR R4 models of ``fhir.resources`` (R4B package)."""

from __future__ import annotations

import importlib
from functools import cache

from pydantic import ValidationError

#: Resource types hub maps today, with the fhir.resources module that holds each model.
RESOURCE_MODULES = {
    "Organization": "organization",
    "Patient": "patient",
    "Encounter": "encounter",
    "Condition": "condition",
    "MedicationRequest": "medicationrequest",
    "ServiceRequest": "servicerequest",
    "Specimen": "specimen",
    "DiagnosticReport": "diagnosticreport",
    "Observation": "observation",
}


@cache
def model_for(resource_type: str) -> type:
    """The pydantic model class for a resource type, e.g. ``Observation``."""
    module = RESOURCE_MODULES.get(resource_type, resource_type.lower())
    try:
        mod = importlib.import_module(f"fhir.resources.R4B.{module}")
    except ModuleNotFoundError as exc:
        raise ValueError(f"{resource_type!r} is not a FHIR R4 resource type") from exc
    return getattr(mod, resource_type)


def validation_problems(resource: dict) -> list[tuple[str, str]]:
    """Validate one resource; return (element path, problem) pairs, empty when valid.

    Messages come from the model's error descriptions, never the offending input value,
    so they are safe to store in clear.
    """
    try:
        model_for(resource["resourceType"]).model_validate(resource)
    except ValidationError as exc:
        out = []
        for err in exc.errors(include_input=False, include_url=False):
            path = ".".join(str(p) for p in err["loc"] if p != "__root__")
            out.append((f"{resource['resourceType']}.{path}" if path else resource["resourceType"], err["msg"]))
        return out
    except (AttributeError, TypeError, KeyError, ValueError) as exc:  # the models' own validators can fail on odd shapes
        return [(resource["resourceType"], f"is not a FHIR R4 resource the models can read ({type(exc).__name__})")]
    return []


@cache
def element_names(resource_type: str) -> frozenset[str]:
    """The top-level element names of a resource type as FHIR JSON spells them (``class``, not ``class_``)."""
    fields = model_for(resource_type).model_fields
    return frozenset((f.alias or name) for name, f in fields.items() if not name.endswith("__ext"))
