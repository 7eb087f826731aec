"""Master key loading and HKDF purpose keys."""

from __future__ import annotations

import pytest

from deid.keys import ENV_KEY, ENV_KEY_FILE, Keyring, MasterKeyError, create_key_file


def test_purpose_keys_differ_and_are_stable():
    k = Keyring(bytes(32))
    assert k.key("patient-linkage") != k.key("identifier")
    assert k.key("patient-linkage") == Keyring(bytes(32)).key("patient-linkage")


def test_unknown_purpose_is_refused():
    with pytest.raises(ValueError):
        Keyring(bytes(32)).key("anything")


def test_key_from_environment_wins(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_KEY, "11" * 32)
    assert Keyring.load(tmp_path / "absent.key").master == bytes([0x11]) * 32


def test_key_file_created_private(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_KEY, raising=False)
    monkeypatch.delenv(ENV_KEY_FILE, raising=False)
    path = create_key_file(tmp_path / "keys" / "master.key")
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(Keyring.load(path).master) == 32


def test_missing_key_says_how_to_provide_one(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_KEY, raising=False)
    monkeypatch.delenv(ENV_KEY_FILE, raising=False)
    with pytest.raises(MasterKeyError) as exc:
        Keyring.load(tmp_path / "none.key")
    assert ENV_KEY in str(exc.value)


def test_short_key_refused(monkeypatch):
    monkeypatch.setenv(ENV_KEY, "abcd")
    with pytest.raises(MasterKeyError):
        Keyring.load(None)


def test_key_id_is_a_fingerprint_not_the_key():
    k = Keyring(bytes(range(32)))
    assert len(k.key_id) == 12 and k.key_id not in k.master.hex()
