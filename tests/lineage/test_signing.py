"""The manifest signing key: where it is read from, that it is not the master key's, and the trusted-keys file."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from hub.lineage.signing import (
    SigningKeyError,
    add_trusted,
    create_key_file,
    ensure_demo_keys,
    load_signer,
    load_trusted,
    trusted_for,
    trusted_yaml,
)
from hub.region import Region
from hub.yamlio import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("HUB_SIGNING_KEY", "HUB_SIGNING_KEY_FILE", "HUB_TRUSTED_KEYS_FILE"):
        monkeypatch.delenv(var, raising=False)


def region_at(ws: Path, **kw) -> Region:
    return Region(name="t", workspace=ws, institutions=[], catalog_url="sqlite://", warehouse=ws / "warehouse", **kw)


def test_the_signing_key_is_not_derived_from_the_master_key(tmp_path, keys):
    key_file, _, created = ensure_demo_keys(tmp_path)
    signer = load_signer(region_at(tmp_path, signing_key_file=key_file))
    derived = Ed25519PrivateKey.from_private_bytes(keys.key("manifest-signing")).public_key().public_bytes_raw().hex()
    assert created and signer.public_hex != derived
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert ensure_demo_keys(tmp_path)[2] is False  # never replaced on a second demo
    assert load_trusted(tmp_path / "keys" / "signing-trusted.yaml").keys[0].public_hex == signer.public_hex


def test_environment_overrides_region_yaml_in_order(tmp_path, monkeypatch):
    in_ws = create_key_file(tmp_path / "ws" / "signing.key")
    outside = create_key_file(tmp_path / "vault" / "signing.key")
    region = region_at(tmp_path / "ws", signing_key_file=tmp_path / "ws" / "signing.key")
    assert load_signer(region).public_hex == in_ws.public_hex
    monkeypatch.setenv("HUB_SIGNING_KEY_FILE", str(tmp_path / "vault" / "signing.key"))
    assert load_signer(region).public_hex == outside.public_hex
    raw = Ed25519PrivateKey.generate()
    monkeypatch.setenv("HUB_SIGNING_KEY", base64.b64encode(raw.private_bytes_raw()).decode())
    signer = load_signer(region)
    assert signer.public_hex == raw.public_key().public_bytes_raw().hex() and signer.source == "HUB_SIGNING_KEY"


def test_a_pem_key_from_openssl_is_accepted_and_signs(tmp_path, monkeypatch):
    key = Ed25519PrivateKey.generate()
    pem = tmp_path / "k.pem"
    pem.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    monkeypatch.setenv("HUB_SIGNING_KEY_FILE", str(pem))
    signer = load_signer(region_at(tmp_path))
    digest = "ab" * 32
    key.public_key().verify(bytes.fromhex(signer.sign(digest)), bytes.fromhex(digest))


def test_no_key_or_a_bad_key_is_refused_saying_where_hub_looked(tmp_path, monkeypatch):
    with pytest.raises(SigningKeyError, match="HUB_SIGNING_KEY_FILE.*signing-create"):
        load_signer(region_at(tmp_path))
    with pytest.raises(SigningKeyError, match="does not exist"):
        load_signer(region_at(tmp_path, signing_key_file=tmp_path / "missing.key"))
    bad = tmp_path / "bad.key"
    bad.write_text("00" * 16)
    monkeypatch.setenv("HUB_SIGNING_KEY_FILE", str(bad))
    with pytest.raises(SigningKeyError, match=f"{bad}: expected a 32-byte Ed25519 private key"):
        load_signer(region_at(tmp_path))
    assert "00" * 16 not in str(pytest.raises(SigningKeyError, load_signer, region_at(tmp_path)).value)  # no key material echoed


def test_trusted_keys_file_errors_name_file_line_and_field(tmp_path):
    f = tmp_path / "trusted.yaml"
    f.write_text("keys:\n  - public_key: 1234\n")
    with pytest.raises(ConfigError, match=r"trusted.yaml:2 keys\[0\].public_key: is not an Ed25519 public key"):
        load_trusted(f)
    f.write_text(f"keys:\n  - public_key: {'a' * 64}\n    from_seq: 5\n    until_seq: 2\n")
    with pytest.raises(ConfigError, match=r"trusted.yaml:4 keys\[0\].until_seq: is before from_seq"):
        load_trusted(f)
    f.write_text("keys: []\n")
    with pytest.raises(ConfigError, match="keys: is missing or empty"):
        load_trusted(f)


def test_rotation_retires_open_keys_at_the_head_and_windows_are_enforced(tmp_path):
    f = tmp_path / "trusted.yaml"
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    f.write_text(trusted_yaml([(old.public_key().public_bytes_raw().hex(), 1, None)]))
    add_trusted(f, new.public_key().public_bytes_raw().hex(), 8)
    trusted = load_trusted(f)
    assert [(k.from_seq, k.until_seq) for k in trusted.keys] == [(1, 7), (8, None)]
    assert [k.public_hex for k in trusted.for_seq(7)] == [old.public_key().public_bytes_raw().hex()]
    assert [k.public_hex for k in trusted.for_seq(8)] == [new.public_key().public_bytes_raw().hex()]


def test_trusted_keys_from_inside_the_workspace_are_flagged(tmp_path, monkeypatch):
    _, trusted_file, _ = ensure_demo_keys(tmp_path / "ws")
    region = region_at(tmp_path / "ws", trusted_keys_file=trusted_file)
    assert trusted_for(region).in_workspace
    outside = tmp_path / "operator.yaml"
    outside.write_text(trusted_file.read_text())
    monkeypatch.setenv("HUB_TRUSTED_KEYS_FILE", str(outside))
    assert not trusted_for(region).in_workspace
    assert trusted_for(region, public_keys=["b" * 64]).keys[0].covers(10**6)
    with pytest.raises(SigningKeyError, match="--public-key: not an Ed25519 public key"):
        trusted_for(region, public_keys=["not-a-key"])
