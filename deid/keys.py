"""Key material: one master secret from a key file or environment, purpose keys via HKDF.

The master secret never lives in the repository. It is read from ``HUB_MASTER_KEY``
(hex or base64) or from a key file (``HUB_KEY_FILE``, or a path given by the caller).
Each use gets its own key derived with HKDF-SHA256, so a key for one purpose reveals
nothing about another.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ENV_KEY = "HUB_MASTER_KEY"
ENV_KEY_FILE = "HUB_KEY_FILE"

#: Purposes for which keys are derived. Adding one is a reviewed change.
PURPOSES = (
    "patient-linkage",  # resident ID number -> cross-institution patient pseudonym
    "identifier",  # MRNs and other identifiers -> per-institution pseudonyms
    "resource-id",  # (institution, namespace, source key) -> resource id
    "source-key",  # lineage column: keyed hash of the source row key
    "quarantine",  # AES-GCM key for quarantined source rows
    "date-shift",  # per-patient date offsets (research zone)
    "perturb",  # keyed, reproducible noise
    "encryption",  # AES-SIV / AES-GCM for values that must stay recoverable
    "research-id",  # research zone: resource ids and references, unlinkable to recognition ids
    "research-linkage",  # research zone: patient pseudonyms
    "manifest-signing",  # Ed25519 seed for signing publication manifests
    "trainset-split",  # patient-level train/validation/test assignment
)


class MasterKeyError(Exception):
    """Raised when no usable master key is configured."""


def _decode(text: str) -> bytes:
    text = text.strip()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        try:
            raw = base64.b64decode(text, validate=True)
        except binascii.Error as exc:
            raise MasterKeyError("master key is neither hex nor base64") from exc
    if len(raw) < 32:
        raise MasterKeyError("master key must be at least 32 bytes (64 hex characters)")
    return raw


def create_key_file(path: Path) -> Path:
    """Write a fresh random 32-byte master key (hex) readable only by its owner."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32) + "\n")
    return path


@dataclass(frozen=True)
class Keyring:
    """Purpose keys derived from one master secret."""

    master: bytes = field(repr=False)

    @classmethod
    def load(cls, key_file: Path | None = None) -> Keyring:
        """Read the master key from HUB_MASTER_KEY, HUB_KEY_FILE, or key_file, in that order."""
        if os.environ.get(ENV_KEY):
            return cls(_decode(os.environ[ENV_KEY]))
        path = Path(os.environ[ENV_KEY_FILE]) if os.environ.get(ENV_KEY_FILE) else key_file
        if path is None or not path.exists():
            raise MasterKeyError(
                f"no master key: set {ENV_KEY}, or {ENV_KEY_FILE} to a key file"
                + (f", or create {path}" if path else "")
            )
        return cls(_decode(path.read_text()))

    def key(self, purpose: str, length: int = 32) -> bytes:
        if purpose not in PURPOSES:
            raise ValueError(f"unknown key purpose {purpose!r}; known: {', '.join(PURPOSES)}")
        return _derive(self.master, purpose, length)

    @functools.cached_property
    def key_id(self) -> str:
        """A short public fingerprint of the master key, recorded with every published row."""
        return hashlib.sha256(_derive(self.master, "key-id")).hexdigest()[:12]

    def hmac_hex(self, purpose: str, message: str, length: int = 32) -> str:
        """Lower-case hex HMAC-SHA256 of message under the purpose key, truncated to length.

        Recent results are remembered (a lab result names its patient, visit and order, so
        the same messages recur); the memo is bounded and lives in this process only.
        Source-key hashes of whole rows never recur and are not remembered."""
        memo_key = (self.master, purpose, message)
        digest = _memo.get(memo_key) if purpose != "source-key" else None
        if digest is None:
            base = _hmac_cache.get((self.master, purpose))
            if base is None:
                base = _hmac_cache[(self.master, purpose)] = hmac.new(self.key(purpose), digestmod=hashlib.sha256)
            h = base.copy()
            h.update(message.encode())
            digest = h.hexdigest()
            if purpose != "source-key":
                if len(_memo) >= _MEMO_SIZE:
                    _memo.clear()
                _memo[memo_key] = digest
        return digest[:length]


_cache: dict[tuple[bytes, str, int], bytes] = {}
_hmac_cache: dict[tuple[bytes, str], hmac.HMAC] = {}
_MEMO_SIZE = 65_536
_memo: dict[tuple[bytes, str, str], str] = {}


def _derive(master: bytes, purpose: str, length: int = 32) -> bytes:
    k = (master, purpose, length)
    if k not in _cache:
        info = b"hub/" + purpose.encode() + (b"" if length == 32 else f"/{length}".encode())
        _cache[k] = HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(master)
    return _cache[k]


def rotate(key_file: Path) -> tuple[str, str]:
    """Retire the master key in key_file (kept as retired/<key id>.key) and write a new one.

    Returns (old key id, new key id). Data sealed under the old key stays readable through
    keyring_for(key_file, old id); pseudonyms change from now on (re-publish to re-key).
    """
    key_file = Path(key_file)
    old = Keyring(_decode(key_file.read_text()))
    retired = key_file.parent / "retired"
    retired.mkdir(mode=0o700, exist_ok=True)
    target = retired / f"{old.key_id}.key"
    os.replace(key_file, target)
    os.chmod(target, 0o600)
    create_key_file(key_file)
    return old.key_id, Keyring.load(key_file).key_id


def keyring_for(key_file: Path | None, key_id: str) -> Keyring:
    """The keyring whose id is key_id: the current one, or a retired one next to the key file."""
    current = Keyring.load(key_file)
    if current.key_id == key_id:
        return current
    if key_file is not None:
        retired = Path(key_file).parent / "retired" / f"{key_id}.key"
        if retired.exists():
            return Keyring(_decode(retired.read_text()))
    raise MasterKeyError(f"no key with id {key_id}: it is neither the current master key nor a retired one")
