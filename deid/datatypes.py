"""FHIR R4 datatypes of resource elements, read once from the fhir.resources R4B models.

The engine decides per leaf by datatype, so it needs, for every element it meets, whether
it is a complex datatype (CodeableConcept, Reference, a backbone element) or a primitive,
and which primitive: ``code`` and ``dateTime`` follow a rule, ``string`` and ``markdown``
are human-readable. The models say it in their annotations (``abc.CodeableConceptType``,
``Annotated[str, String()]``); this module turns those into plain records, cached per
model, so nothing here runs per row.
"""

from __future__ import annotations

import importlib
import types
import typing
from dataclasses import dataclass
from functools import cache

from hub.fhir.validate import model_for

#: Primitive datatypes whose values are free text a person wrote (or a binary blob).
HUMAN_READABLE = frozenset({"string", "markdown", "xhtml", "base64Binary"})
DATES = frozenset({"date", "dateTime", "instant"})
NUMBERS = frozenset({"decimal", "integer", "integer64", "positiveInt", "unsignedInt"})

# fhir_core metadata class name -> FHIR primitive type name
_PRIMITIVES = {
    "String": "string", "Markdown": "markdown", "Xhtml": "xhtml", "Base64Binary": "base64Binary",
    "EncodedBytes": "base64Binary", "Code": "code", "Id": "id", "Uri": "uri", "Url": "url",
    "Canonical": "canonical", "Oid": "oid", "Uuid": "uuid", "Integer": "integer",
    "Integer64": "integer64", "Decimal": "decimal", "PositiveInt": "positiveInt",
    "UnsignedInt": "unsignedInt", "Date": "date", "DateTime": "dateTime", "Instant": "instant",
    "Time": "time", "Boolean": "boolean", "UuidVersion": "uuid",
}


@dataclass(frozen=True)
class ElementType:
    """One element of a resource or datatype, as FHIR JSON spells it."""

    name: str  # JSON name: ``class``, not ``class_``
    kind: str  # "primitive", "complex" or "resource" (contained resources)
    type: str  # primitive type name (``string``, ``dateTime``) or complex type name (``Coding``)
    model: type | None  # the model of a complex element
    is_list: bool

    @property
    def human_readable(self) -> bool:
        return self.kind == "primitive" and self.type in HUMAN_READABLE


def type_name(model: type) -> str:
    """A model's FHIR name: ``CodeableConcept``, ``Observation``, ``ObservationReferenceRange``."""
    return model.__name__


def _resolve(annotation: typing.Any) -> tuple[str, str, type | None, bool]:
    is_list = False
    while True:
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0]
        elif origin in (list, typing.List):  # noqa: UP006 - the models use typing.List
            is_list = True
            annotation = typing.get_args(annotation)[0]
        else:
            break
    if typing.get_origin(annotation) is typing.Annotated:
        for meta in typing.get_args(annotation)[1:]:
            name = _PRIMITIVES.get(type(meta).__name__)
            if name:
                return "primitive", name, None, is_list
        raise TypeError(f"unknown primitive annotation {annotation!r}")
    if annotation is bool:
        return "primitive", "boolean", None, is_list
    klass_path = getattr(annotation, "_model_klass", None)
    if klass_path:
        module, _, cls = klass_path.rpartition(".")
        model = getattr(importlib.import_module(module), cls)
        if _is_resource(model):
            return "resource", cls, None, is_list
        return "complex", cls, model, is_list
    raise TypeError(f"unknown element annotation {annotation!r}")


def _is_resource(model: type) -> bool:
    names = {c.__name__ for c in model.__mro__}
    return "Resource" in names and "Element" not in names


@cache
def elements(model: type) -> dict[str, ElementType]:
    """Every element of a model by JSON name (primitive-extension ``_x`` fields left out)."""
    out: dict[str, ElementType] = {}
    for name, f in model.model_fields.items():
        if name.endswith("__ext") or name == "fhir_comments":
            continue
        json_name = f.alias or name
        kind, tname, sub, is_list = _resolve(f.annotation)
        out[json_name] = ElementType(json_name, kind, tname, sub, is_list)
    return out


@cache
def datatype_model(name: str) -> type | None:
    """The model of a complex datatype (``Reference``) or resource type (``Observation``), else None."""
    if name[:1].isupper():
        try:
            mod = importlib.import_module(f"fhir.resources.R4B.{name.lower()}")
            model = getattr(mod, name, None)
            if model is not None:
                return model
        except ModuleNotFoundError:
            pass
        try:
            return model_for(name)
        except ValueError:
            return None
    return None
