"""Sealed message files: raw HL7 v2 messages the MLLP listener stored, encrypted at rest.

A sealed file is ``MAGIC``, the 12-character id of the master key, a 12-byte nonce and the
AES-GCM ciphertext of the raw message under the key's ``quarantine`` purpose key (as the
quarantine seals rows), with institution, feed and file name as associated data: a file
moved to another feed or renamed does not open. hub.sources.mllp writes them,
hub.sources.hl7v2 reads them.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

if TYPE_CHECKING:
    from deid.keys import Keyring

MAGIC = b"HUBMLLP1"
SUFFIX = ".hl7.sealed"
FOLDER = "mllp"  # inside the feed's folder
_seq = itertools.count(1)


class SealedError(Exception):
    """A sealed file that cannot be opened: problem and what was expected."""

    def __init__(self, problem: str, expected: str):
        super().__init__(problem)
        self.problem, self.expected = problem, expected


def _aad(institution: str, feed: str, name: str) -> bytes:
    return f"hl7v2-mllp|{institution}|{feed}|{name}".encode()


def seal(keys: Keyring, institution: str, feed: str, name: str, data: bytes) -> bytes:
    """The sealed form of a raw message: magic, key id, nonce, AES-GCM ciphertext."""
    nonce = os.urandom(12)
    return MAGIC + keys.key_id.encode() + nonce + AESGCM(keys.key("quarantine")).encrypt(nonce, data, _aad(institution, feed, name))


def unseal(keys: Keyring, institution: str, feed: str, path: Path) -> bytes:
    """The raw message of a sealed file; raises SealedError when it cannot be opened with keys."""
    blob = path.read_bytes()
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 12 + 12 + 16:
        raise SealedError("is not a sealed MLLP message file", f"a file the listener wrote ({SUFFIX})")
    key_id = blob[len(MAGIC):len(MAGIC) + 12].decode("ascii", "replace")
    if key_id != keys.key_id:
        raise SealedError(f"was sealed under master key {key_id}, not the configured {keys.key_id}",
                             "the master key the listener ran with (restore it to read this message)")
    nonce, body = blob[len(MAGIC) + 12:len(MAGIC) + 24], blob[len(MAGIC) + 24:]
    try:
        return AESGCM(keys.key("quarantine")).decrypt(nonce, body, _aad(institution, feed, path.name))
    except InvalidTag:
        raise SealedError("fails its integrity check (altered or truncated)", "the file as the listener wrote it") from None


def store(folder: Path, keys: Keyring, institution: str, feed: str, data: bytes) -> Path:
    """Seal and write one message durably (fsync of the file and of its folder); returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns():020d}-{os.getpid()}-{next(_seq):06d}{SUFFIX}"
    tmp = folder / f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, seal(keys, institution, feed, name, data))
        os.fsync(fd)
    finally:
        os.close(fd)
    final = folder / name
    os.rename(tmp, final)
    dirfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)
    return final
