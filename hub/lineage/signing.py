"""The manifest signing key and the public keys verifiers trust: tamper evidence that survives an insider.

The signing key is an Ed25519 key of its own, not derived from the master key, so a copy
of the workspace (master key included) cannot sign a manifest. Its private half is read
from, in order:

1. ``HUB_SIGNING_KEY``: the 32-byte private key as hex or base64;
2. ``HUB_SIGNING_KEY_FILE``: a file holding that, or a PEM PKCS#8 Ed25519 key
   (``openssl genpkey -algorithm ed25519``);
3. ``signing_key_file:`` in region.yaml.

In production it lives outside the workspace, readable only by the account that publishes.
``hub demo`` creates one inside the workspace for convenience, and says so.

Verifiers check signatures against a trusted-keys file the operator controls (YAML, see
``load_trusted``), never against the public key a manifest row carries. Each trusted key
has a validity window in manifest sequence numbers, so after a rotation the old manifests
keep verifying under the old key while the old key cannot sign anything newer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

from hub.errors import CommandFailed
from hub.yamlio import ConfigError, LineDict, load_yaml

ENV_SIGNING_KEY = "HUB_SIGNING_KEY"
ENV_SIGNING_KEY_FILE = "HUB_SIGNING_KEY_FILE"
ENV_TRUSTED_KEYS_FILE = "HUB_TRUSTED_KEYS_FILE"
DEMO_KEY_NAME = "signing.key"
DEMO_TRUSTED_NAME = "signing-trusted.yaml"


class SigningKeyError(CommandFailed):
    """No usable signing key (or trusted-keys file); the message says where hub looked."""

    def __init__(self, message: str):
        super().__init__(message, 2)


def key_id_of(public_hex: str) -> str:
    """A short fingerprint of a public key (what manifests and messages name a key by)."""
    return hashlib.sha256(bytes.fromhex(public_hex)).hexdigest()[:16]


def _public_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


@dataclass(frozen=True)
class Signer:
    """An Ed25519 private key that signs manifest digests; ``source`` says where it was read from."""

    private: Ed25519PrivateKey = field(repr=False)
    source: str

    @property
    def public_hex(self) -> str:
        return _public_hex(self.private)

    @property
    def key_id(self) -> str:
        return key_id_of(self.public_hex)

    def sign(self, digest: str) -> str:
        """Signature (hex) over a hex SHA-256 digest."""
        return self.private.sign(bytes.fromhex(digest)).hex()


def parse_private(text: str, where: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from hex or base64 (32 bytes) or PEM PKCS#8 text; where names the source in errors."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = load_pem_private_key(text.encode(), password=None)
        except (ValueError, TypeError) as exc:
            raise SigningKeyError(f"{where}: not a readable unencrypted PEM private key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningKeyError(f"{where}: the PEM key is not an Ed25519 key")
        return key
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        try:
            raw = base64.b64decode(text, validate=True)
        except binascii.Error:
            raw = b""
    if len(raw) != 32:
        raise SigningKeyError(f"{where}: expected a 32-byte Ed25519 private key as 64 hex characters, base64, or PEM")
    return Ed25519PrivateKey.from_private_bytes(raw)


def load_signer(region) -> Signer:
    """The region's signing key: HUB_SIGNING_KEY, else HUB_SIGNING_KEY_FILE, else region.yaml signing_key_file."""
    if os.environ.get(ENV_SIGNING_KEY):
        return Signer(parse_private(os.environ[ENV_SIGNING_KEY], ENV_SIGNING_KEY), ENV_SIGNING_KEY)
    if os.environ.get(ENV_SIGNING_KEY_FILE):
        path, how = Path(os.environ[ENV_SIGNING_KEY_FILE]), ENV_SIGNING_KEY_FILE
    elif region.signing_key_file is not None:
        path, how = region.signing_key_file, f"signing_key_file in {region.workspace / 'region.yaml'}"
    else:
        raise SigningKeyError(
            f"no manifest signing key: set {ENV_SIGNING_KEY} or {ENV_SIGNING_KEY_FILE}, or signing_key_file in "
            f"{region.workspace / 'region.yaml'}; create a key outside the workspace with `hub keys signing-create PATH`")
    if not path.exists():
        raise SigningKeyError(f"signing key file {path} (from {how}) does not exist; create one with `hub keys signing-create {path}`")
    return Signer(parse_private(path.read_text(encoding="utf-8"), str(path)), str(path))


def create_key_file(path: Path) -> Signer:
    """Write a fresh Ed25519 private key (hex) readable only by its owner; never overwrites."""
    path.parent.mkdir(parents=True, exist_ok=True)
    seed = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(seed.hex() + "\n")
    return Signer(Ed25519PrivateKey.from_private_bytes(seed), str(path))


@dataclass(frozen=True)
class TrustedKey:
    """A public key trusted to sign the manifests numbered from_seq to until_seq (open-ended when None)."""

    public_hex: str
    from_seq: int = 1
    until_seq: int | None = None
    where: str = ""  # file:line it came from

    @property
    def key_id(self) -> str:
        return key_id_of(self.public_hex)

    def covers(self, seq: int) -> bool:
        return self.from_seq <= seq and (self.until_seq is None or seq <= self.until_seq)

    def verifies(self, signature_hex: str, digest_hex: str) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(self.public_hex)).verify(bytes.fromhex(signature_hex), bytes.fromhex(digest_hex))
        except Exception:  # InvalidSignature, or a signature that is not even hex  # noqa: BLE001
            return False
        return True


@dataclass(frozen=True)
class TrustedKeys:
    keys: tuple[TrustedKey, ...]
    source: str  # where they were read from, for the report
    in_workspace: bool = False  # an insider who can write the workspace could have replaced them

    def for_seq(self, seq: int) -> list[TrustedKey]:
        return [k for k in self.keys if k.covers(seq)]


def _check_public(value, file: str, line: int, fld: str) -> str:
    text = str(value).strip().lower()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ConfigError(file, line, fld, "is not an Ed25519 public key", "64 hex characters (`hub keys signing-public` prints it)")
    return text


def load_trusted(path: Path, workspace: Path | None = None) -> TrustedKeys:
    """Read a trusted-keys file::

        keys:
          - public_key: 3d40...660c   # 64 hex characters
            from_seq: 1               # first manifest it may sign (default 1)
            until_seq: 120            # last one, once the key is retired (default: open)

    Errors name file, line and field.
    """
    if not path.exists():
        raise SigningKeyError(f"trusted signing keys file {path} does not exist")
    doc = load_yaml(path)
    f = str(path)
    if not isinstance(doc, LineDict) or not isinstance(doc.get("keys"), list) or not doc["keys"]:
        raise ConfigError(f, getattr(doc, "line", 1) or 1, "keys", "is missing or empty", "a list of {public_key, from_seq, until_seq}")
    out = []
    for i, node in enumerate(doc["keys"]):
        fld = f"keys[{i}]"
        if not isinstance(node, LineDict) or "public_key" not in node:
            raise ConfigError(f, getattr(node, "line", doc.line_of("keys")), f"{fld}.public_key", "is missing", "the key's public half, 64 hex characters")
        public = _check_public(node["public_key"], f, node.line_of("public_key"), f"{fld}.public_key")
        bounds = {}
        for name in ("from_seq", "until_seq"):
            value = node.get(name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f, node.line_of(name), f"{fld}.{name}", f"{value!r} is not a manifest sequence number", "a whole number from 1")
            bounds[name] = value
        from_seq = bounds["from_seq"] or 1
        if bounds["until_seq"] is not None and bounds["until_seq"] < from_seq:
            raise ConfigError(f, node.line_of("until_seq"), f"{fld}.until_seq", "is before from_seq", f"at least {from_seq}")
        out.append(TrustedKey(public, from_seq, bounds["until_seq"], f"{f}:{node.line}"))
    inside = workspace is not None and path.resolve().is_relative_to(workspace.resolve())
    return TrustedKeys(tuple(out), f, inside)


def trusted_for(region, file: Path | None = None, public_keys: list[str] | tuple[str, ...] = ()) -> TrustedKeys:
    """The keys a verifier trusts: public_keys (valid for every manifest), else file, else
    HUB_TRUSTED_KEYS_FILE, else region.yaml trusted_keys_file."""
    if public_keys:
        try:
            keys = tuple(TrustedKey(_check_public(p, "", 0, ""), where="--public-key") for p in public_keys)
        except ConfigError:
            raise SigningKeyError("--public-key: not an Ed25519 public key; expected 64 hex characters (`hub keys signing-public`)") from None
        return TrustedKeys(keys, "--public-key")
    if file is None and os.environ.get(ENV_TRUSTED_KEYS_FILE):
        file = Path(os.environ[ENV_TRUSTED_KEYS_FILE])
    if file is None:
        file = region.trusted_keys_file
    if file is None:
        raise SigningKeyError(
            f"no trusted signing keys: pass --trusted-keys FILE or --public-key HEX, set {ENV_TRUSTED_KEYS_FILE}, "
            f"or trusted_keys_file in {region.workspace / 'region.yaml'}")
    return load_trusted(file, region.workspace)


def trusted_yaml(entries: list[tuple[str, int, int | None]]) -> str:
    """A trusted-keys file for (public key, from_seq, until_seq) entries."""
    lines = [
        "# Public keys trusted to sign hub's publication manifests (`hub audit verify`).",
        "# Keep the copy you verify with outside the workspace: `hub audit verify --trusted-keys <copy>`.",
        "keys:",
    ]
    for public, from_seq, until_seq in entries:
        lines += [f"  - public_key: {public}", f"    from_seq: {from_seq}"]
        if until_seq is not None:
            lines.append(f"    until_seq: {until_seq}")
    return "\n".join(lines) + "\n"


def ensure_demo_keys(workspace: Path) -> tuple[Path, Path, bool]:
    """For the demo: a signing key and a trusted-keys file in <workspace>/keys, created if missing.

    Returns (key file, trusted-keys file, whether the key was created now).
    """
    key_file = workspace / "keys" / DEMO_KEY_NAME
    trusted = workspace / "keys" / DEMO_TRUSTED_NAME
    created = not key_file.exists()
    signer = create_key_file(key_file) if created else Signer(parse_private(key_file.read_text(encoding="utf-8"), str(key_file)), str(key_file))
    if created or not trusted.exists():
        trusted.write_text(trusted_yaml([(signer.public_hex, 1, None)]), encoding="utf-8")
    return key_file, trusted, created


def add_trusted(path: Path, public_hex: str, from_seq: int, workspace: Path | None = None) -> None:
    """Trust public_hex from manifest from_seq on, retiring the file's open keys at from_seq - 1 (creating the file if needed)."""
    entries: list[tuple[str, int, int | None]] = []
    if path.exists():
        for k in load_trusted(path, workspace).keys:
            until = k.until_seq if k.until_seq is not None else from_seq - 1
            if until >= k.from_seq:  # a key that never signed anything is dropped, not kept with an empty window
                entries.append((k.public_hex, k.from_seq, until))
    entries.append((public_hex, from_seq, None))
    path.write_text(trusted_yaml(entries), encoding="utf-8")
