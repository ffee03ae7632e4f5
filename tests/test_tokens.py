"""Tokens: the documented wire format, and every way a token must be refused."""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dpmsf_core.errors import Forbidden, Unauthorized
from dpmsf_core.tenancy.replay import MemoryReplayStore
from dpmsf_core.tenancy.tokens import DEFAULT_MAX_TTL, Claims, TenantKey, TokenVerifier, decode_key, generate_key, mint

TENANT = "6f1c1b1e-8a8e-4c57-9a53-0d5c6f3f4a10"
OTHER = "0b7f5e0a-3c1d-4e2f-8a9b-1c2d3e4f5a6b"
DISABLED = "9d2a4c3b-1e0f-4a5b-8c7d-6e5f4a3b2c1d"
LEGACY_DISABLED = "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f"  # a key_for of the old kind: raises Forbidden, no key
NOW = 1_700_000_000.0


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.fixture
def keys() -> dict[str, bytes]:
    return {TENANT: decode_key(generate_key()), OTHER: decode_key(generate_key()), DISABLED: decode_key(generate_key())}


@pytest.fixture
def clock() -> list[float]:
    return [NOW]


@pytest.fixture
def verifier(keys: dict[str, bytes], clock: list[float]) -> TokenVerifier:
    def key_for(tenant: str) -> bytes | TenantKey | None:
        if tenant == LEGACY_DISABLED:
            raise Forbidden("tenant disabled")
        if tenant == DISABLED:
            return TenantKey(keys[DISABLED], enabled=False)
        return keys.get(tenant)

    return TokenVerifier(key_for, MemoryReplayStore(clock=lambda: clock[0]), skew=5.0, clock=lambda: clock[0])


def refused(verifier: TokenVerifier, token: str) -> Unauthorized:
    with pytest.raises(Unauthorized) as info:
        verifier.verify(token)
    return info.value


def test_round_trip_gives_the_claims(verifier: TokenVerifier, keys: dict[str, bytes]) -> None:
    claims = verifier.verify(mint(TENANT, keys[TENANT], ttl=60, now=NOW))
    assert isinstance(claims, Claims)
    assert (claims.tenant, claims.iat, claims.exp) == (TENANT, int(NOW), int(NOW) + 60)
    assert len(claims.jti) == 32 and int(claims.jti, 16) >= 0


@pytest.mark.parametrize("prefix", ["", "Bearer ", "bearer ", "  BEARER   "])
def test_accepts_bare_token_or_bearer_header(verifier: TokenVerifier, keys: dict[str, bytes], prefix: str) -> None:
    assert verifier.verify(prefix + mint(TENANT, keys[TENANT], now=NOW)).tenant == TENANT


def test_key_may_be_text_or_bytes_and_tenant_any_uuid_spelling() -> None:
    key = generate_key()
    verifier = TokenVerifier(
        lambda tenant: decode_key(key) if tenant == TENANT else None, MemoryReplayStore(), clock=lambda: NOW
    )
    assert verifier.verify(mint(TENANT.upper(), key, now=NOW)).tenant == TENANT
    assert verifier.verify(mint(uuid.UUID(TENANT).hex, decode_key(key), now=NOW)).tenant == TENANT


def test_wire_format_is_as_documented(keys: dict[str, bytes]) -> None:
    token = mint(TENANT, keys[TENANT], ttl=30, now=NOW + 0.9)
    assert "=" not in token
    raw = b64d(token)
    assert raw[0] == 1
    assert raw[1:17] == uuid.UUID(TENANT).bytes
    plain = AESGCM(keys[TENANT]).decrypt(raw[17:29], raw[29:], raw[:17])
    data = json.loads(plain)
    assert list(data) == ["iat", "exp", "jti"]
    assert plain == json.dumps(data, separators=(",", ":")).encode()
    assert data["iat"] == int(NOW) and data["exp"] == int(NOW + 30.9)


def test_every_token_is_different(keys: dict[str, bytes]) -> None:
    tokens = {mint(TENANT, keys[TENANT], now=NOW) for _ in range(200)}
    assert len(tokens) == 200


def test_a_token_works_once(verifier: TokenVerifier, keys: dict[str, bytes]) -> None:
    token = mint(TENANT, keys[TENANT], now=NOW)
    verifier.verify(token)
    assert refused(verifier, token).detail == "invalid or expired token"
    assert refused(verifier, "Bearer " + token).detail == "invalid or expired token"


@pytest.mark.parametrize("value", [None, "", "   ", "Bearer", "Bearer   "])
def test_missing_token(verifier: TokenVerifier, value: str | None) -> None:
    error = refused(verifier, value)  # type: ignore[arg-type]
    assert (error.status, error.detail) == (401, "missing bearer token")
    assert error.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("elapsed", "ok"),
    [(-5, True), (-6, False), (60, True), (65, True), (66, False), (3600, False)],
    ids=["iat-within-skew", "iat-in-future", "at-exp", "exp-within-skew", "expired", "long-expired"],
)
def test_time_window(
    verifier: TokenVerifier, keys: dict[str, bytes], clock: list[float], elapsed: float, ok: bool
) -> None:
    token = mint(TENANT, keys[TENANT], ttl=60, now=NOW)
    clock[0] = NOW + elapsed
    if ok:
        assert verifier.verify(token).tenant == TENANT
    else:
        assert refused(verifier, token).detail == "invalid or expired token"


def _with_byte_flipped(token: str, index: int) -> str:
    raw = bytearray(b64d(token))
    raw[index] ^= 0x01
    return b64e(bytes(raw))


@pytest.mark.parametrize(
    "index", [0, 1, 16, 17, 28, 29, 40, -17, -1], ids=["version", "tenant", "tenant-end", "nonce", "nonce-end",
                                                        "ciphertext", "ciphertext-mid", "ciphertext-end", "tag"]
)  # fmt: skip
def test_any_changed_byte_is_refused(verifier: TokenVerifier, keys: dict[str, bytes], index: int) -> None:
    token = mint(TENANT, keys[TENANT], now=NOW)
    assert refused(verifier, _with_byte_flipped(token, index)).detail == "invalid or expired token"
    assert verifier.verify(token).tenant == TENANT  # the refused copies did not use it up


def test_tenant_cannot_be_swapped(verifier: TokenVerifier, keys: dict[str, bytes]) -> None:
    raw = b64d(mint(TENANT, keys[TENANT], now=NOW))
    swapped = raw[:1] + uuid.UUID(OTHER).bytes + raw[17:]
    assert refused(verifier, b64e(swapped)).detail == "invalid or expired token"


def test_token_for_another_key_is_refused(verifier: TokenVerifier) -> None:
    assert refused(verifier, mint(TENANT, generate_key(), now=NOW)).status == 401


def test_unknown_tenant_is_401(verifier: TokenVerifier) -> None:
    stranger = str(uuid.uuid4())
    assert refused(verifier, mint(stranger, generate_key(), now=NOW)).detail == "invalid or expired token"


def test_disabled_tenant_is_403_only_for_an_authentic_token(verifier: TokenVerifier, keys: dict[str, bytes]) -> None:
    with pytest.raises(Forbidden) as info:
        verifier.verify(mint(DISABLED, keys[DISABLED], now=NOW))
    assert (info.value.status, info.value.detail) == (403, "tenant disabled")


def _answer(verifier: TokenVerifier, token: str) -> tuple[type, int, str, dict[str, str]]:
    """Everything a caller sees of a refusal: kind, status, detail and headers."""
    with pytest.raises((Unauthorized, Forbidden)) as info:
        verifier.verify(token)
    error = info.value
    return type(error), error.status, error.detail, dict(error.headers)


def test_forged_token_for_disabled_tenant_answers_like_unknown_tenant(
    verifier: TokenVerifier, keys: dict[str, bytes]
) -> None:
    """A caller without the key cannot tell a disabled tenant id from one that does not exist."""
    unknown = _answer(verifier, mint(str(uuid.uuid4()), generate_key(), now=NOW))
    assert unknown[:3] == (Unauthorized, 401, "invalid or expired token")
    assert _answer(verifier, mint(DISABLED, generate_key(), now=NOW)) == unknown
    assert _answer(verifier, mint(LEGACY_DISABLED, generate_key(), now=NOW)) == unknown  # old key_for: no leak
    # a tampered copy of a real token of the disabled tenant says no more than that either
    real = mint(DISABLED, keys[DISABLED], now=NOW)
    for index in (17, 29, -1):  # nonce, ciphertext, tag
        assert _answer(verifier, _with_byte_flipped(real, index)) == unknown
    assert _answer(verifier, real)[:3] == (Forbidden, 403, "tenant disabled")  # the intact one is authentic


def test_disabled_tenant_token_is_not_used_up(verifier: TokenVerifier, keys: dict[str, bytes]) -> None:
    """A refused token of a disabled tenant is not claimed: it proves nothing was served."""
    claimed: list[str] = []

    class Recording:
        def claim(self, jti: str, expires_at: float) -> bool:
            claimed.append(jti)
            return True

    verifier._replay = Recording()
    with pytest.raises(Forbidden):
        verifier.verify(mint(DISABLED, keys[DISABLED], now=NOW))
    assert claimed == []


def test_expired_token_of_disabled_tenant_is_401(
    verifier: TokenVerifier, keys: dict[str, bytes], clock: list[float]
) -> None:
    token = mint(DISABLED, keys[DISABLED], ttl=10, now=NOW)
    clock[0] = NOW + 60
    assert refused(verifier, token).detail == "invalid or expired token"


def test_key_for_may_answer_tenant_key_objects(keys: dict[str, bytes]) -> None:
    clock = lambda: NOW  # noqa: E731 - the tokens below are minted at NOW
    verifier = TokenVerifier(
        lambda tenant: TenantKey(keys[TENANT]) if tenant == TENANT else None, MemoryReplayStore(), clock=clock
    )
    assert verifier.verify(mint(TENANT, keys[TENANT], now=NOW)).tenant == TENANT
    verifier = TokenVerifier(lambda tenant: TenantKey(b"", enabled=True), MemoryReplayStore(), clock=clock)  # no key
    assert refused(verifier, mint(TENANT, keys[TENANT], now=NOW)).detail == "invalid or expired token"


# -- lifetime bound (DPMSF_TOKEN_MAX_TTL) ---------------------------------------------------------------------


def test_default_max_ttl_is_300() -> None:
    assert DEFAULT_MAX_TTL == 300


@pytest.mark.parametrize(("lifetime", "ok"), [(299, True), (300, True), (301, False), (86_400, False)])
def test_token_lifetime_is_bounded(verifier: TokenVerifier, keys: dict[str, bytes], lifetime: int, ok: bool) -> None:
    token = mint(TENANT, keys[TENANT], ttl=lifetime, now=NOW, max_ttl=None)
    if ok:
        claims = verifier.verify(token)
        assert claims.exp - claims.iat == lifetime
    else:
        assert _answer(verifier, token) == _answer(verifier, mint(str(uuid.uuid4()), generate_key(), now=NOW))


def test_too_long_lived_forged_payload_is_refused_and_not_used_up(
    verifier: TokenVerifier, keys: dict[str, bytes]
) -> None:
    """Hand-made with the real key (not through mint): the server's own check refuses it, and keeps no trace."""
    jti = "0123456789abcdef0123456789abcdef"
    long_lived = b'{"iat":1700000000,"exp":1700003600,"jti":"%s"}' % jti.encode()
    assert refused(verifier, _forge(keys[TENANT], long_lived)).detail == "invalid or expired token"
    ok = b'{"iat":1700000000,"exp":1700000300,"jti":"%s"}' % jti.encode()
    assert verifier.verify(_forge(keys[TENANT], ok)).jti == jti  # the same id was not claimed by the refusal


def test_max_ttl_is_configurable(keys: dict[str, bytes]) -> None:
    strict = TokenVerifier(lambda t: keys.get(t), MemoryReplayStore(), clock=lambda: NOW, max_ttl=30)
    assert strict.verify(mint(TENANT, keys[TENANT], ttl=30, now=NOW)).tenant == TENANT
    assert refused(strict, mint(TENANT, keys[TENANT], ttl=31, now=NOW)).detail == "invalid or expired token"
    lenient = TokenVerifier(lambda t: keys.get(t), MemoryReplayStore(), clock=lambda: NOW, max_ttl=3600)
    assert lenient.verify(mint(TENANT, keys[TENANT], ttl=3600, now=NOW, max_ttl=3600)).tenant == TENANT


def test_mint_refuses_lifetimes_the_server_would_refuse() -> None:
    key = generate_key()
    with pytest.raises(ValueError, match=r"Token ttl 301 is longer than 300 s.*DPMSF_TOKEN_MAX_TTL"):
        mint(TENANT, key, ttl=301)
    with pytest.raises(ValueError, match="longer than 60 s"):
        mint(TENANT, key, ttl=61, max_ttl=60)
    assert mint(TENANT, key, ttl=300)  # the limit itself is fine
    assert mint(TENANT, key, ttl=301, max_ttl=None)  # explicitly unbounded, for tests of the refusal


@pytest.mark.parametrize("ttl", [0.5, 1.5, 299.1, 299.9, 300])
def test_minted_lifetime_never_exceeds_max_ttl(verifier: TokenVerifier, keys: dict[str, bytes], ttl: float) -> None:
    """Fractional ttls are truncated to whole seconds on the wire; what mint allows the verifier accepts."""
    for frac in (0.0, 0.3, 0.99):
        claims = verifier.verify(mint(TENANT, keys[TENANT], ttl=ttl, now=NOW + frac))
        assert claims.exp - claims.iat <= DEFAULT_MAX_TTL


@pytest.mark.parametrize("cut", [1, 16, 40], ids=["one-char", "tag", "most"])
def test_truncated_token_is_refused(verifier: TokenVerifier, keys: dict[str, bytes], cut: int) -> None:
    token = mint(TENANT, keys[TENANT], now=NOW)
    assert refused(verifier, token[:-cut]).detail == "invalid or expired token"


@pytest.mark.parametrize(
    "garbage",
    ["not a token", "AAAA", "abc$def", "x" * 5, "A" * 161, "A" * 5000, "QQ==", "====", "Bearer a.b.c"],
)
def test_garbage_is_refused(verifier: TokenVerifier, garbage: str) -> None:
    assert refused(verifier, garbage).detail == "invalid or expired token"


def test_padded_token_is_refused(verifier: TokenVerifier, keys: dict[str, bytes]) -> None:
    token = mint(TENANT, keys[TENANT], now=NOW)
    padded = token + "=" * (-len(token) % 4 or 4)
    assert refused(verifier, padded).status == 401


def _forge(key: bytes, plaintext: bytes) -> str:
    header = b"\x01" + uuid.UUID(TENANT).bytes
    nonce = b"\x00" * 12
    return b64e(header + nonce + AESGCM(key).encrypt(nonce, plaintext, header))


@pytest.mark.parametrize(
    "plaintext",
    [
        b"not json at all, long enough to pass the size check",
        b'{"iat":1700000000,"exp":1700000060,"jti":"0123456789abcdef0123456789ABCDEF"}',
        b'{"iat":1700000000,"exp":1700000060,"jti":"0123456789abcdef0123456789abcde"}',
        b'{"iat":"1700000000","exp":1700000060,"jti":"0123456789abcdef0123456789abcdef"}',
        b'{"iat":1700000000,"exp":1700000060.5,"jti":"0123456789abcdef0123456789abcdef"}',
        b'{"iat":1700000000,"exp":true,"jti":"0123456789abcdef0123456789abcdef"}',
        b'{"iat":1700000000,"jti":"0123456789abcdef0123456789abcdef","x":1}',
        b'[1700000000,1700000060,"0123456789abcdef0123456789abcdef", "padding padding"]',
        b'{"iat":1700000060,"exp":1700000000,"jti":"0123456789abcdef0123456789abcdef"}',
    ],
    ids=["not-json", "jti-upper", "jti-short", "iat-str", "exp-float", "exp-bool", "no-exp", "list", "exp-before-iat"],
)
def test_authentic_but_malformed_payload_is_refused(
    verifier: TokenVerifier, keys: dict[str, bytes], plaintext: bytes
) -> None:
    assert refused(verifier, _forge(keys[TENANT], plaintext)).detail == "invalid or expired token"


def test_well_formed_forged_payload_is_accepted(verifier: TokenVerifier, keys: dict[str, bytes]) -> None:
    plain = b'{"iat":1700000000,"exp":1700000060,"jti":"0123456789abcdef0123456789abcdef"}'
    assert verifier.verify(_forge(keys[TENANT], plain)).jti == "0123456789abcdef0123456789abcdef"


def test_replay_entry_lives_until_exp_plus_skew(keys: dict[str, bytes]) -> None:
    claimed: list[tuple[str, float]] = []

    class Recording:
        def claim(self, jti: str, expires_at: float) -> bool:
            claimed.append((jti, expires_at))
            return True

    verifier = TokenVerifier(lambda t: keys.get(t), Recording(), skew=7, clock=lambda: NOW)
    claims = verifier.verify(mint(TENANT, keys[TENANT], ttl=10, now=NOW))
    assert claimed == [(claims.jti, int(NOW) + 10 + 7)]


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("short", "is not base64url text"),
        ("abc!" * 11, "is not base64url text"),
        (b64e(b"x" * 16), "is 16 bytes long"),
        (b"x" * 31, "is 31 bytes long"),
    ],
)
def test_bad_keys_are_explained(key: str | bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_key(key)
    with pytest.raises(ValueError, match=message):
        mint(TENANT, key)


def test_bad_key_message_does_not_print_the_key() -> None:
    secret = generate_key()[:-2] + "!!"
    with pytest.raises(ValueError) as info:
        decode_key(secret)
    assert secret not in str(info.value)


def test_generate_key() -> None:
    a, b = generate_key(), generate_key()
    assert a != b and len(a) == 43 and "=" not in a
    assert decode_key(a + "=") == decode_key(a) == b64d(a)


@pytest.mark.parametrize(
    ("tenant", "ttl", "message"), [("nope", 60, "not a UUID"), (TENANT, 0, "ttl"), (TENANT, -1, "ttl")]
)
def test_mint_checks_arguments(tenant: str, ttl: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mint(tenant, generate_key(), ttl=ttl)


def test_mint_and_verify_are_fast(keys: dict[str, bytes]) -> None:
    verifier = TokenVerifier(lambda t: keys.get(t), MemoryReplayStore())
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        verifier.verify(mint(TENANT, keys[TENANT]))
    per_call = (time.perf_counter() - start) / n
    assert per_call < 300e-6, f"mint+verify took {per_call * 1e6:.0f} µs"  # ~10 µs on an idle core
