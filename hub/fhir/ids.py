"""Deterministic, keyed resource ids.

A resource id is an HMAC of (institution, namespace, source key) under the ``resource-id``
purpose key, so a re-run gives the same ids (publishing is an idempotent upsert) while a
low-entropy source key such as an MRN cannot be recovered by hashing guesses.
"""

from __future__ import annotations

from collections.abc import Sequence

from deid.keys import Keyring

_SEP = "\x1f"


def key_text(values: Sequence[object]) -> str:
    """Canonical text of a (possibly composite) source key."""
    return _SEP.join("" if v is None else str(v).strip() for v in values)


def resource_id(keys: Keyring, institution: str, namespace: str, key: Sequence[object]) -> str:
    """The FHIR id (32 lower-case hex characters) of the resource with this source key."""
    return keys.hmac_hex("resource-id", _SEP.join((institution, namespace, key_text(key))))


def source_key_hash(
    keys: Keyring, institution: str, system: str, table: str, key: Sequence[object]
) -> str:
    """Lineage column: keyed hash of the source row's key, recomputable by the hub only."""
    return keys.hmac_hex("source-key", _SEP.join((institution, system, table, key_text(key))))
