"""Temporal, single-use, encrypted tokens: only a holder of the tenant's key can mint one, and each works once.

Wire format (the Python client and ``static/dpmsf-token.js`` produce the same bytes)::

    token     = base64url_no_padding( version || tenant || nonce || ciphertext_and_tag )
    version   = 1 byte, 0x01
    tenant    = 16 bytes, the tenant UUID in clear (so the server can find the key)
    nonce     = 12 random bytes
    ciphertext_and_tag = AES-256-GCM(key, nonce, plaintext, aad = version || tenant), 16-byte tag at the end
    plaintext = compact UTF-8 JSON {"iat":<int epoch s>,"exp":<int epoch s>,"jti":"<32 hex chars>"}

The key is the tenant's 32-byte secret, written as base64url without padding (``generate_key()``).
Because the version and tenant are authenticated data, a token cannot be moved to another tenant.
The server accepts ``iat - skew <= now <= exp + skew`` and ``exp - iat <= max_ttl`` (``DPMSF_TOKEN_MAX_TTL``,
default 300 s: a leaked token is worth little, and a client cannot mint itself a long-lived credential), then
claims ``jti`` in a replay store once. Every refusal is the same 401 ``invalid or expired token``, so a caller
without the key learns nothing: not whether the tenant exists, nor whether it is disabled. "Tenant disabled"
(403) is said only to a token that decrypts with that tenant's key.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import Forbidden, Unauthorized
from .replay import ReplayStore

__all__ = [
    "DEFAULT_MAX_TTL",
    "Claims",
    "TenantKey",
    "TokenVerifier",
    "decode_key",
    "encode_key",
    "generate_key",
    "mint",
]

DEFAULT_MAX_TTL = 300  # seconds; the default of DPMSF_TOKEN_MAX_TTL (config.py repeats it to stay import-light)

VERSION = 1
_VERSION_BYTE = bytes([VERSION])
_NONCE_LEN = 12
_TAG_LEN = 16
_MIN_PLAINTEXT = len('{"iat":0,"exp":0,"jti":""}') + 32
_MIN_RAW = 1 + 16 + _NONCE_LEN + _MIN_PLAINTEXT + _TAG_LEN
_MAX_TOKEN_CHARS = 512  # real tokens are ~150 chars; anything longer is not worth decoding
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_JTI = re.compile(r"[0-9a-f]{32}")
_INVALID = "invalid or expired token"


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    """Strict base64url without padding: ValueError on anything else."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def generate_key() -> str:
    """A new random 256-bit tenant key, as base64url without padding (43 characters)."""
    return _b64encode(os.urandom(32))


def encode_key(raw: bytes) -> str:
    """32 key bytes as the text ``generate_key()`` gives (the inverse of ``decode_key``)."""
    if len(raw) != 32:
        raise ValueError(f"Tenant key is {len(raw)} bytes long. Expected 32 bytes (256 bits).")
    return _b64encode(bytes(raw))


def decode_key(key: str | bytes) -> bytes:
    """The 32 key bytes from ``generate_key()`` text (or raw bytes); ValueError naming the problem otherwise."""
    if isinstance(key, bytes | bytearray):
        raw = bytes(key)
    else:
        text = str(key).strip().rstrip("=")
        try:
            raw = _b64decode(text)
        except (ValueError, binascii.Error):
            shown = text[:4] + "..." if len(text) > 4 else text
            raise ValueError(
                f"Tenant key {shown!r} is not base64url text. Expected 43 characters from generate_key()."
            ) from None
    if len(raw) != 32:
        raise ValueError(f"Tenant key is {len(raw)} bytes long. Expected 32 bytes (256 bits) from generate_key().")
    return raw


@functools.lru_cache(maxsize=4096)
def _tenant_bytes(tenant_id: str) -> bytes:
    try:
        return uuid.UUID(str(tenant_id)).bytes
    except ValueError:
        raise ValueError(f"Tenant id {tenant_id!r} is not a UUID.") from None


def mint(
    tenant_id: str,
    key: bytes | str,
    ttl: float = 60,
    now: float | None = None,
    max_ttl: float | None = DEFAULT_MAX_TTL,
) -> str:
    """A fresh token for ``tenant_id`` valid ``ttl`` seconds from ``now``; every call gives a different one.

    ``ttl`` above ``max_ttl`` (default 300 s, what servers accept unless ``DPMSF_TOKEN_MAX_TTL`` says otherwise)
    is a ValueError: such a token would only be refused. Pass the server's limit, or None to mint one anyway
    (tests of the refusal do).
    """
    if not ttl > 0:
        raise ValueError(f"Token ttl {ttl!r} is not valid. Expected a positive number of seconds.")
    if max_ttl is not None and ttl > max_ttl:
        raise ValueError(
            f"Token ttl {ttl!r} is longer than {max_ttl:g} s, the longest lifetime the server accepts"
            " (DPMSF_TOKEN_MAX_TTL). Expected a shorter ttl."
        )
    now = time.time() if now is None else now
    header = _VERSION_BYTE + _tenant_bytes(tenant_id)
    nonce = os.urandom(_NONCE_LEN)
    plaintext = b'{"iat":%d,"exp":%d,"jti":"%s"}' % (int(now), int(now + ttl), os.urandom(16).hex().encode())
    return _b64encode(header + nonce + AESGCM(decode_key(key)).encrypt(nonce, plaintext, header))


@dataclass(frozen=True)
class TenantKey:
    """What ``key_for`` knows of a tenant: its key, and whether it may call.

    The verifier needs the key of a disabled tenant too: it checks the token with it first and says
    "tenant disabled" (403) only to a token that decrypts, so a caller without the key cannot tell a disabled
    tenant from an unknown one.
    """

    key: bytes = field(repr=False)
    enabled: bool = True


@dataclass(frozen=True)
class Claims:
    """What a verified token says: who sent it, when it was minted, until when it is valid, and its unique id."""

    tenant: str
    iat: int
    exp: int
    jti: str


class TokenVerifier:
    """Checks bearer tokens: decrypts with the tenant's key, checks times and lifetime, claims the id once.

    ``key_for(tenant)`` returns the tenant's key bytes (an enabled tenant), a ``TenantKey`` (which may say
    disabled), or None (unknown). A ``key_for`` that raises Forbidden, as older ones did for a disabled tenant,
    gives the same 401 as an unknown tenant: nothing is said before the token authenticates.
    """

    def __init__(
        self,
        key_for: Callable[[str], bytes | TenantKey | None],
        replay: ReplayStore,
        skew: float = 5.0,
        clock: Callable[[], float] = time.time,
        max_ttl: float = DEFAULT_MAX_TTL,
    ) -> None:
        self._key_for = key_for
        self._replay = replay
        self._skew = skew
        self._clock = clock
        self._max_ttl = max_ttl
        self._ciphers: dict[bytes, AESGCM] = {}
        # Unknown tenants are still "decrypted" (with a key nobody has), so they cost what a known one does.
        self._nobody = AESGCM(os.urandom(32))

    def _cipher(self, key: bytes) -> AESGCM:
        cipher = self._ciphers.get(key)
        if cipher is None:
            if len(self._ciphers) > 1024:
                self._ciphers.clear()
            cipher = self._ciphers[key] = AESGCM(key)
        return cipher

    def _lookup(self, tenant: str) -> tuple[AESGCM | None, bool]:
        """The tenant's cipher (None when unknown or without a usable key) and whether it is enabled."""
        try:
            found = self._key_for(tenant)
        except Forbidden:  # an older key_for's "disabled", said before the token was checked: say nothing
            return None, False
        if found is None:
            return None, False
        if isinstance(found, TenantKey):
            return (self._cipher(found.key) if found.key else None), found.enabled
        return (self._cipher(found) if found else None), True

    def verify(self, header_value_or_token: str | None) -> Claims:
        """The token's claims, or Unauthorized (401); Forbidden (403) for an authentic token of a disabled tenant."""
        token = (header_value_or_token or "").strip()
        scheme, _, rest = token.partition(" ")
        if scheme.lower() == "bearer":
            token = rest.strip()
        if not token:
            raise Unauthorized("missing bearer token")
        if len(token) > _MAX_TOKEN_CHARS:
            raise Unauthorized(_INVALID)
        try:
            raw = _b64decode(token)
        except (ValueError, binascii.Error):
            raise Unauthorized(_INVALID) from None
        if len(raw) < _MIN_RAW or raw[0] != VERSION:
            raise Unauthorized(_INVALID)
        header, nonce, sealed = raw[:17], raw[17:29], raw[29:]
        tenant = str(uuid.UUID(bytes=header[1:]))
        cipher, enabled = self._lookup(tenant)
        try:
            data = json.loads((cipher or self._nobody).decrypt(nonce, sealed, header))
            iat, exp, jti = data["iat"], data["exp"], data["jti"]
        except (InvalidTag, ValueError, TypeError, KeyError):
            raise Unauthorized(_INVALID) from None
        if cipher is None:  # unreachable in practice: nobody holds the stand-in key
            raise Unauthorized(_INVALID)
        if type(iat) is not int or type(exp) is not int or not isinstance(jti, str) or not _JTI.fullmatch(jti):
            raise Unauthorized(_INVALID)
        now = self._clock()
        if exp + self._skew < now or iat - self._skew > now or exp < iat or exp - iat > self._max_ttl:
            raise Unauthorized(_INVALID)
        if not enabled:  # the token is authentic: its holder may learn that the tenant is disabled
            raise Forbidden("tenant disabled")
        if not self._replay.claim(jti, exp + self._skew):
            raise Unauthorized(_INVALID)
        return Claims(tenant=tenant, iat=iat, exp=exp, jti=jti)
