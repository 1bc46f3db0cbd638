"""Credential encryption: format, binding to the row, tamper detection, key rotation, settings errors."""

from __future__ import annotations

import base64
import os
import uuid

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from geniehelper.crypto import (
    CredentialCipher,
    CredentialContext,
    CredentialDecryptError,
    CredentialError,
    CredentialKeyError,
)

KEY_OLD = bytes(range(32))
KEY_NEW = bytes(range(32, 64))
CTX = CredentialContext(
    table="platform_connections",
    column="credentials_enc",
    row_id="3d0c6f5e-7a44-4d4c-9a57-1c2f0b9b6a11",
    user_id="9b1f2a30-5c1e-4f7b-8a0e-2d6c4e8f1a22",
)
SECRET = "sess=abc123; token=eyJhbGciOi…✓"


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64u_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture
def cipher() -> CredentialCipher:
    return CredentialCipher({"k1": KEY_OLD}, active_key_id="k1")


def test_round_trip_and_format(cipher: CredentialCipher) -> None:
    stored = cipher.encrypt(SECRET, CTX)
    version, key_id, nonce_b64, sealed_b64 = stored.split(":")
    assert (version, key_id) == ("gh1", "k1")
    assert stored.isascii()
    assert len(b64u_decode(nonce_b64)) == 12
    assert len(b64u_decode(sealed_b64)) == len(SECRET.encode()) + 16
    assert SECRET not in stored
    assert cipher.decrypt(stored, CTX) == SECRET
    assert cipher.key_id_of(stored) == "k1"


def test_uuid_objects_and_their_text_are_the_same_context(cipher: CredentialCipher) -> None:
    as_uuids = CredentialContext(CTX.table, CTX.column, uuid.UUID(str(CTX.row_id)), uuid.UUID(str(CTX.user_id)))
    assert cipher.decrypt(cipher.encrypt(SECRET, as_uuids), CTX) == SECRET


def test_padded_base64_is_accepted(cipher: CredentialCipher) -> None:
    # One byte of plaintext: 17 sealed bytes, whose base64 needs one "=" of padding.
    version, key_id, nonce_b64, sealed_b64 = cipher.encrypt("x", CTX).split(":")
    padded_sealed = sealed_b64 + "=" * (-len(sealed_b64) % 4)
    assert padded_sealed.endswith("=")
    assert cipher.decrypt(f"{version}:{key_id}:{nonce_b64}:{padded_sealed}", CTX) == "x"


def test_each_encryption_uses_a_fresh_nonce(cipher: CredentialCipher) -> None:
    stored = [cipher.encrypt(SECRET, CTX) for _ in range(200)]
    nonces = {s.split(":")[2] for s in stored}
    assert len(nonces) == 200
    assert len(set(stored)) == 200


def test_tampering_any_byte_of_nonce_ciphertext_or_tag_fails(cipher: CredentialCipher) -> None:
    stored = cipher.encrypt("short secret", CTX)
    version, key_id, nonce_b64, sealed_b64 = stored.split(":")
    nonce, sealed = b64u_decode(nonce_b64), b64u_decode(sealed_b64)
    for i in range(len(nonce)):
        bad = bytearray(nonce)
        bad[i] ^= 0x01
        with pytest.raises(CredentialDecryptError):
            cipher.decrypt(f"{version}:{key_id}:{b64u(bytes(bad))}:{sealed_b64}", CTX)
    # Covers the ciphertext bytes and the 16 tag bytes at the end.
    for i in range(len(sealed)):
        bad = bytearray(sealed)
        bad[i] ^= 0x80
        with pytest.raises(CredentialDecryptError):
            cipher.decrypt(f"{version}:{key_id}:{nonce_b64}:{b64u(bytes(bad))}", CTX)


def test_any_change_to_the_stored_string_fails(cipher: CredentialCipher) -> None:
    stored = cipher.encrypt("short secret", CTX)
    prefix = len("gh1:k1:")
    for i in range(prefix, len(stored)):
        if stored[i] == ":":
            continue
        replacement = "A" if stored[i] != "A" else "B"
        with pytest.raises(CredentialDecryptError):
            cipher.decrypt(stored[:i] + replacement + stored[i + 1 :], CTX)


@pytest.mark.parametrize(
    "other",
    [
        CredentialContext(CTX.table, CTX.column, "11111111-1111-4111-8111-111111111111", CTX.user_id),
        CredentialContext(CTX.table, "refresh_token_enc", CTX.row_id, CTX.user_id),
        CredentialContext("other_table", CTX.column, CTX.row_id, CTX.user_id),
        CredentialContext(CTX.table, CTX.column, CTX.row_id, "22222222-2222-4222-8222-222222222222"),
    ],
    ids=["other-row", "other-column", "other-table", "other-creator"],
)
def test_ciphertext_moved_elsewhere_fails(cipher: CredentialCipher, other: CredentialContext) -> None:
    stored = cipher.encrypt(SECRET, CTX)
    with pytest.raises(CredentialDecryptError):
        cipher.decrypt(stored, other)


def test_context_refuses_separator_and_empty_fields() -> None:
    with pytest.raises(ValueError):
        CredentialContext("t|x", "c", "1", "u")
    with pytest.raises(ValueError):
        CredentialContext("t", "c", "", "u")


def test_wrong_key_with_the_same_key_id_fails(cipher: CredentialCipher) -> None:
    stored = cipher.encrypt(SECRET, CTX)
    impostor = CredentialCipher({"k1": os.urandom(32)}, active_key_id="k1")
    with pytest.raises(CredentialDecryptError):
        impostor.decrypt(stored, CTX)


def test_relabelled_key_id_fails() -> None:
    # Both keys configured: changing the key id in the stored string must not decrypt (it is in the AAD).
    both = CredentialCipher({"k1": KEY_OLD, "k2": KEY_OLD}, active_key_id="k1")
    stored = both.encrypt(SECRET, CTX)
    with pytest.raises(CredentialDecryptError):
        both.decrypt(stored.replace("gh1:k1:", "gh1:k2:", 1), CTX)


def test_unknown_key_id_fails(cipher: CredentialCipher) -> None:
    other = CredentialCipher({"k9": KEY_NEW}, active_key_id="k9")
    with pytest.raises(CredentialKeyError, match="k9"):
        cipher.decrypt(other.encrypt(SECRET, CTX), CTX)


def test_eight_byte_nonce_is_refused(cipher: CredentialCipher) -> None:
    # AESGCM itself would accept this value: the cipher must refuse it on its own.
    nonce = os.urandom(8)
    aad = CTX.associated_data("k1")
    sealed = AESGCM(KEY_OLD).encrypt(nonce, SECRET.encode(), aad)
    assert AESGCM(KEY_OLD).decrypt(nonce, sealed, aad) == SECRET.encode()
    with pytest.raises(CredentialDecryptError, match="12 bytes"):
        cipher.decrypt(f"gh1:k1:{b64u(nonce)}:{b64u(sealed)}", CTX)


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plaintext-token",
        "v1:aaaa:bbbb:cccc",
        "gh1:k1:onlythree",
        "gh1:k1:a:b:c",
        "gh2:k1:AAAAAAAAAAAAAAAA:AAAAAAAAAAAAAAAAAAAAAA",
        "gh1:bad id:AAAAAAAAAAAAAAAA:AAAAAAAAAAAAAAAAAAAAAA",
        "gh1:k1:AAAA*AAAAAAAAAAA:AAAAAAAAAAAAAAAAAAAAAA",
        "gh1:k1:AAAAAAAAAAAAAAAA:AAAA",
    ],
)
def test_ill_formed_values_fail_without_fallback(cipher: CredentialCipher, stored: str) -> None:
    with pytest.raises(CredentialDecryptError):
        cipher.decrypt(stored, CTX)


def test_rotation_old_key_decrypts_and_reencrypt_uses_active_key() -> None:
    before = CredentialCipher({"k1": KEY_OLD}, active_key_id="k1")
    stored_old = before.encrypt(SECRET, CTX)

    after = CredentialCipher({"k1": KEY_OLD, "k2": KEY_NEW}, active_key_id="k2")
    assert after.needs_rotation(stored_old)
    assert after.decrypt(stored_old, CTX) == SECRET

    rotated = after.reencrypt(stored_old, CTX)
    assert after.key_id_of(rotated) == "k2"
    assert not after.needs_rotation(rotated)
    assert after.decrypt(rotated, CTX) == SECRET
    assert after.key_id_of(after.encrypt(SECRET, CTX)) == "k2"

    # Once the old key is retired, only rotated values still decrypt.
    retired = CredentialCipher({"k2": KEY_NEW}, active_key_id="k2")
    assert retired.decrypt(rotated, CTX) == SECRET
    with pytest.raises(CredentialKeyError):
        retired.decrypt(stored_old, CTX)


def test_from_settings_values_with_old_keys() -> None:
    std_b64 = base64.b64encode(KEY_NEW).decode()
    url_b64_unpadded = b64u(KEY_OLD)
    cipher = CredentialCipher.from_settings_values(std_b64, "k2", f" k1:{url_b64_unpadded} , ")
    stored_old = CredentialCipher({"k1": KEY_OLD}, "k1").encrypt(SECRET, CTX)
    assert cipher.decrypt(stored_old, CTX) == SECRET
    assert cipher.key_id_of(cipher.encrypt(SECRET, CTX)) == "k2"
    assert CredentialCipher.from_settings_values(std_b64, "k2", None).active_key_id == "k2"


@pytest.mark.parametrize(
    ("active", "key_id", "old", "variable"),
    [
        (None, "k1", None, "CREDENTIALS_ENC_KEY_B64"),
        ("  ", "k1", None, "CREDENTIALS_ENC_KEY_B64"),
        ("not base64 !!", "k1", None, "CREDENTIALS_ENC_KEY_B64"),
        (base64.b64encode(os.urandom(16)).decode(), "k1", None, "CREDENTIALS_ENC_KEY_B64"),
        (base64.b64encode(os.urandom(33)).decode(), "k1", None, "CREDENTIALS_ENC_KEY_B64"),
        (base64.b64encode(KEY_NEW).decode(), "bad id", None, "CREDENTIALS_ENC_KEY_ID"),
        (base64.b64encode(KEY_NEW).decode(), "k2", "k1", "CREDENTIALS_OLD_KEYS"),
        (base64.b64encode(KEY_NEW).decode(), "k2", "k1:%%%", "CREDENTIALS_OLD_KEYS"),
        (base64.b64encode(KEY_NEW).decode(), "k2", f"k1:{b64u(os.urandom(31))}", "CREDENTIALS_OLD_KEYS"),
        (base64.b64encode(KEY_NEW).decode(), "k2", f"k2:{b64u(KEY_OLD)}", "CREDENTIALS_OLD_KEYS"),
        (base64.b64encode(KEY_NEW).decode(), "k2", f"bad id:{b64u(KEY_OLD)}", "CREDENTIALS_OLD_KEYS"),
    ],
)
def test_bad_settings_values_name_the_variable_never_the_key(
    active: str | None, key_id: str, old: str | None, variable: str
) -> None:
    with pytest.raises(CredentialKeyError) as info:
        CredentialCipher.from_settings_values(active, key_id, old)
    message = str(info.value)
    assert variable in message
    for secret in (active, old.partition(":")[2] if old else None):
        if secret and secret.strip() and len(secret.strip()) > 4:
            assert secret.strip() not in message


def test_constructor_validates_keys() -> None:
    with pytest.raises(CredentialKeyError):
        CredentialCipher({"k1": b"short"}, "k1")
    with pytest.raises(CredentialKeyError):
        CredentialCipher({"k1": KEY_OLD}, "k2")
    with pytest.raises(CredentialKeyError):
        CredentialCipher({"k:1": KEY_OLD}, "k:1")


def test_repr_and_errors_do_not_reveal_keys() -> None:
    cipher = CredentialCipher({"k1": KEY_OLD, "k2": KEY_NEW}, active_key_id="k2")
    text = repr(cipher)
    assert "k1" in text and "k2" in text
    for key in (KEY_OLD, KEY_NEW):
        assert key.hex() not in text
        assert base64.b64encode(key).decode() not in text
        assert repr(key) not in text
    assert issubclass(CredentialKeyError, CredentialError)
    assert issubclass(CredentialDecryptError, CredentialError)
