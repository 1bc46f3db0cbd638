"""Encryption of stored platform credentials (tokens, cookies) with AES-256-GCM.

Stored form, one ASCII string: ``gh1:<key_id>:<nonce b64url>:<ciphertext+tag b64url>``.

- The key id names the key that encrypted the value, so keys can rotate: values written with an old
  key still decrypt while the old key is configured, and `reencrypt` moves them to the active key.
- The associated data binds the value to its row (table, column, row id, creator) and to the key id:
  a ciphertext copied into another row, column or creator's connection fails authentication instead
  of silently decrypting as someone else's credential.
- There is no plaintext fallback: anything that does not decrypt raises.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT_VERSION = "gh1"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16

ACTIVE_KEY_ENV = "CREDENTIALS_ENC_KEY_B64"
ACTIVE_KEY_ID_ENV = "CREDENTIALS_ENC_KEY_ID"
OLD_KEYS_ENV = "CREDENTIALS_OLD_KEYS"

_KEY_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_B64_ANY_RE = re.compile(r"[A-Za-z0-9+/_-]*={0,2}")


class CredentialError(Exception):
    """Base of every credential encryption error. Messages never contain keys or plaintext."""


class CredentialKeyError(CredentialError):
    """A key is missing, ill-formed or of the wrong length, or a value names an unknown key id."""


class CredentialDecryptError(CredentialError):
    """A stored value is ill-formed, was tampered with, or belongs to another key, row or creator."""


@dataclass(frozen=True, slots=True)
class CredentialContext:
    """Where a credential is stored; bound into the ciphertext as associated data.

    Ids are compared as text: pass them the same way on encrypt and decrypt (a UUID is rendered
    canonically by `str()`, so UUID objects and their `str()` are interchangeable).
    """

    table: str
    column: str
    row_id: str | int | UUID
    user_id: str | int | UUID

    def __post_init__(self) -> None:
        for name in ("table", "column", "row_id", "user_id"):
            text = str(getattr(self, name))
            # "|" separates the fields of the associated data: refusing it keeps the encoding unambiguous.
            if not text or "|" in text:
                raise ValueError(f"CredentialContext.{name} must be non-empty and contain no '|'")

    def associated_data(self, key_id: str) -> bytes:
        fields = (FORMAT_VERSION, self.table, self.column, str(self.row_id), str(self.user_id), key_id)
        return "|".join(fields).encode("utf-8")


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    """Decode base64url with or without padding; reject anything outside the alphabet."""
    # The stdlib decoder silently skips unknown characters unless told otherwise: check first.
    if not _B64URL_RE.fullmatch(text):
        raise ValueError("not base64url")
    unpadded = text.rstrip("=")
    data = base64.urlsafe_b64decode(unpadded + "=" * (-len(unpadded) % 4))
    # Refuse non-canonical encodings (stray low bits in the last character), so that any change to
    # the stored string is a change to the bytes it carries.
    if _b64url_encode(data) != unpadded:
        raise ValueError("not canonical base64url")
    return data


def _decode_key_b64(text: str, env_name: str) -> bytes:
    """Decode a key given in standard or url-safe base64 (`openssl rand -base64 32` gives the former)."""
    compact = "".join(text.split())
    if not compact or not _B64_ANY_RE.fullmatch(compact):
        raise CredentialKeyError(f"{env_name}: a key is not valid base64")
    unpadded = compact.rstrip("=").replace("+", "-").replace("/", "_")
    try:
        key = base64.urlsafe_b64decode(unpadded + "=" * (-len(unpadded) % 4))
    except (binascii.Error, ValueError):
        raise CredentialKeyError(f"{env_name}: a key is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise CredentialKeyError(f"{env_name}: a key must decode to {KEY_BYTES} bytes, got {len(key)}")
    return key


class CredentialCipher:
    """Encrypts with the active key; decrypts with any configured key, chosen by the stored key id."""

    __slots__ = ("_active_key_id", "_aeads")

    def __init__(self, keys: Mapping[str, bytes], active_key_id: str) -> None:
        aeads: dict[str, AESGCM] = {}
        for key_id, key in keys.items():
            if not _KEY_ID_RE.fullmatch(key_id):
                raise CredentialKeyError(f"key id {key_id!r} must match [A-Za-z0-9_-]{{1,32}}")
            if len(key) != KEY_BYTES:
                raise CredentialKeyError(f"key {key_id!r} must be {KEY_BYTES} bytes, got {len(key)}")
            aeads[key_id] = AESGCM(key)
        if active_key_id not in aeads:
            raise CredentialKeyError(f"active key id {active_key_id!r} has no key")
        self._aeads = aeads
        self._active_key_id = active_key_id

    @classmethod
    def from_settings_values(
        cls, active_key_b64: str | None, active_key_id: str, old_keys: str | None
    ) -> CredentialCipher:
        """Build from the environment's values.

        `active_key_b64` is CREDENTIALS_ENC_KEY_B64; `old_keys` is CREDENTIALS_OLD_KEYS, a list
        ``"id1:base64key,id2:base64key"`` of retired keys kept for decryption until rotation is done.
        """
        if active_key_b64 is None or not active_key_b64.strip():
            raise CredentialKeyError(f"{ACTIVE_KEY_ENV} is not set (32 random bytes, base64)")
        if not _KEY_ID_RE.fullmatch(active_key_id):
            raise CredentialKeyError(f"{ACTIVE_KEY_ID_ENV} must match [A-Za-z0-9_-]{{1,32}}")
        keys = {active_key_id: _decode_key_b64(active_key_b64, ACTIVE_KEY_ENV)}
        for entry in (old_keys or "").split(","):
            if not entry.strip():
                continue
            key_id, sep, key_b64 = entry.strip().partition(":")
            key_id = key_id.strip()
            if not sep or not _KEY_ID_RE.fullmatch(key_id):
                raise CredentialKeyError(
                    f"{OLD_KEYS_ENV}: each entry must be <key_id>:<base64 key>, key id [A-Za-z0-9_-]{{1,32}}"
                )
            if key_id in keys:
                raise CredentialKeyError(f"{OLD_KEYS_ENV}: key id {key_id!r} is given twice")
            keys[key_id] = _decode_key_b64(key_b64, OLD_KEYS_ENV)
        return cls(keys, active_key_id)

    @property
    def active_key_id(self) -> str:
        return self._active_key_id

    def __repr__(self) -> str:
        return f"CredentialCipher(active_key_id={self._active_key_id!r}, key_ids={sorted(self._aeads)!r})"

    def encrypt(self, plaintext: str, ctx: CredentialContext) -> str:
        key_id = self._active_key_id
        # A fresh random nonce per value: GCM loses both secrecy and integrity if a nonce repeats.
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aeads[key_id].encrypt(nonce, plaintext.encode("utf-8"), ctx.associated_data(key_id))
        return f"{FORMAT_VERSION}:{key_id}:{_b64url_encode(nonce)}:{_b64url_encode(sealed)}"

    def decrypt(self, stored: str, ctx: CredentialContext) -> str:
        key_id, nonce, sealed = _parse(stored)
        aead = self._aeads.get(key_id)
        if aead is None:
            raise CredentialKeyError(f"credential was encrypted with key id {key_id!r}, which is not configured")
        try:
            plaintext = aead.decrypt(nonce, sealed, ctx.associated_data(key_id))
        except InvalidTag:
            raise CredentialDecryptError(
                "credential failed authentication: tampered, wrong key, or stored for another row or creator"
            ) from None
        try:
            return plaintext.decode("utf-8")
        except UnicodeDecodeError:
            raise CredentialDecryptError("credential plaintext is not UTF-8") from None

    def key_id_of(self, stored: str) -> str:
        return _parse(stored)[0]

    def needs_rotation(self, stored: str) -> bool:
        return self.key_id_of(stored) != self._active_key_id

    def reencrypt(self, stored: str, ctx: CredentialContext) -> str:
        """Decrypt with whichever key wrote the value and encrypt again with the active key."""
        return self.encrypt(self.decrypt(stored, ctx), ctx)


def _parse(stored: str) -> tuple[str, bytes, bytes]:
    parts = stored.split(":")
    if len(parts) != 4 or parts[0] != FORMAT_VERSION:
        raise CredentialDecryptError(f"credential is not in the {FORMAT_VERSION}:<key_id>:<nonce>:<data> form")
    _, key_id, nonce_b64, sealed_b64 = parts
    if not _KEY_ID_RE.fullmatch(key_id):
        raise CredentialDecryptError("credential has an ill-formed key id")
    try:
        nonce = _b64url_decode(nonce_b64)
        sealed = _b64url_decode(sealed_b64)
    except (binascii.Error, ValueError):
        raise CredentialDecryptError("credential nonce or data is not base64url") from None
    # AESGCM itself accepts nonces of 8 to 128 bytes: only ever accept the 12 bytes we write.
    if len(nonce) != NONCE_BYTES:
        raise CredentialDecryptError(f"credential nonce must be {NONCE_BYTES} bytes, got {len(nonce)}")
    if len(sealed) < TAG_BYTES:
        raise CredentialDecryptError("credential data is shorter than the authentication tag")
    return key_id, nonce, sealed
