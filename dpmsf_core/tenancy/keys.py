"""Tenant keys at rest: wrapped with the server's master key (AES-256-GCM, the tenant id as associated data), so a
copied database holds no usable key and a wrapped key moved to another tenant's row does not unwrap.

``MasterKey`` wraps and unwraps; ``load_master_key`` finds it (``DPMSF_MASTER_KEY``, else a key file created 0600
in the 0700 state directory); ``Sealer`` is what a registry holds: it also recognises keys stored in clear by
older versions (to be rewritten wrapped) and logs once per tenant whose key cannot be used.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .state_files import private_dir, write_secret_once
from .tokens import decode_key, encode_key, generate_key

log = logging.getLogger("dpmsf.tenants")

MASTER_KEY_FILE = "master.key"  # in the state directory, when DPMSF_MASTER_KEY is not set
WRAP_PREFIX = "wrap1:"
_NONCE_LEN = 12


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class MasterKey:
    """The server master key: wraps tenant keys for storage and unwraps them, bound to their tenant id.

    Wrapped form: ``wrap1:`` + base64url(nonce(12) || AES-256-GCM(master, nonce, key(32), aad) incl. 16-byte tag),
    ``aad = b"wrap1:" + tenant id`` (canonical UUID text). ``source`` names where the key came from, for log lines;
    the key itself is never shown.
    """

    def __init__(self, key: bytes | str, source: str = "DPMSF_MASTER_KEY") -> None:
        try:
            raw = decode_key(key)
        except ValueError:
            raise ValueError(
                f"Master key from {source} is not valid. Expected 32 bytes as base64url without padding"
                " (43 characters, e.g. from dpmsf_core.tenancy.tokens.generate_key())."
            ) from None
        self._aead = AESGCM(raw)
        self.source = source

    def __repr__(self) -> str:
        return f"MasterKey(source={self.source!r})"

    @staticmethod
    def _aad(tid: str) -> bytes:
        return WRAP_PREFIX.encode() + tid.encode("ascii")

    def wrap(self, tid: str, key: str) -> str:
        """``key`` (generate_key() text) sealed for tenant ``tid``; every call gives a different text."""
        nonce = os.urandom(_NONCE_LEN)
        return WRAP_PREFIX + _b64encode(nonce + self._aead.encrypt(nonce, decode_key(key), self._aad(tid)))

    def unwrap(self, tid: str, stored: str) -> str:
        """The key text sealed by ``wrap(tid, ...)``; ValueError for another master key, tenant or a damaged value."""
        if not stored.startswith(WRAP_PREFIX):
            raise ValueError("not a wrapped key")
        try:
            raw = _b64decode(stored[len(WRAP_PREFIX) :])
            return encode_key(self._aead.decrypt(raw[:_NONCE_LEN], raw[_NONCE_LEN:], self._aad(tid)))
        except (InvalidTag, ValueError, binascii.Error):
            raise ValueError("wrapped key does not unwrap") from None


def load_master_key(
    master_key: MasterKey | bytes | str | None, state_dir: str | os.PathLike[str] | None, *, tighten: bool = True
) -> MasterKey:
    """The given master key, else the one in ``<state_dir>/master.key``, created on first use.

    The key file is for local use: it is created 0600 in a 0700 state directory (an existing one we own is
    tightened to 0700 unless ``tighten`` is False, for a folder that is not the configured state directory), by
    whichever process gets there first; the others read the same key. With no ``state_dir`` either (an
    in-memory database), a random key lives as long as the process, like the data it protects.
    """
    if isinstance(master_key, MasterKey):
        return master_key
    if master_key is not None and master_key != "":
        return MasterKey(master_key)
    if state_dir is None:
        return MasterKey(os.urandom(32), source="a key of this process only")
    folder = private_dir(state_dir, tighten=tighten)
    path = folder / MASTER_KEY_FILE
    text = write_secret_once(path, (generate_key() + "\n").encode("ascii")).decode("ascii", "replace").strip()
    return MasterKey(text, source=f"key file {path}")


class Sealer:
    """A registry's master key, plus one log line per tenant whose stored key cannot be used."""

    def __init__(self, master: MasterKey, where: str) -> None:
        self.master = master
        self.where = where
        self._reported: set[str] = set()

    def seal(self, tid: str, key: str) -> str:
        return self.master.wrap(tid, key)

    def open(self, tid: str, stored: str) -> tuple[str, bool]:
        """(key text or ``""`` if unusable, True when ``stored`` was clear text that should be rewritten wrapped)."""
        if stored.startswith(WRAP_PREFIX):
            try:
                return self.master.unwrap(tid, stored), False
            except ValueError:
                self._report(tid, f"its stored key does not unwrap with the master key from {self.master.source}")
                return "", False
        try:
            return encode_key(decode_key(stored)), True  # written in clear by an older version
        except ValueError:
            self._report(tid, "its stored key is neither wrapped nor a valid key")
            return "", False

    def _report(self, tid: str, why: str) -> None:
        if tid not in self._reported:
            self._reported.add(tid)
            log.error(
                "tenant %s in %s: %s; its tokens are refused until its key is rotated"
                " (dpmsf tenant rotate-key) or the right DPMSF_MASTER_KEY is set",
                tid,
                self.where,
                why,
            )
