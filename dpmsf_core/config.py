"""Settings from the environment and ``.env``, validated once at start-up with one clear line per bad value."""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ._backends import parse_backend_url
from .errors import ConfigError
from .sources import split_plugin_path
from .switches import OFF_WORDS, ON_WORDS
from .tenancy.quotas import Quotas

if TYPE_CHECKING:
    from pathlib import Path

# a str, not a Path: pathlib imports urllib.parse and ipaddress, which a Lambda cold start does not otherwise need
BUNDLED_PLUGINS = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "plugins")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def on_lambda(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return "AWS_LAMBDA_FUNCTION_NAME" in env


@dataclass(frozen=True)
class Settings:
    """Every knob in one frozen object; the README's configuration table documents each."""

    num_url_parms: int = 10
    url_parm_names: tuple[str, ...] = tuple(f"parm_{i}" for i in range(1, 11))
    plugins: tuple[str, ...] = (".",)
    admin_id: str | None = None
    admin_key: str | None = None
    require_tokens: bool = False
    token_ttl: float = 60.0
    token_max_ttl: int = 300  # the server refuses tokens whose exp - iat is longer (tokens.DEFAULT_MAX_TTL)
    key_cache_seconds: float = 5.0  # how long a tenant's key (and enabled flag) is cached between registry reads
    token_skew: float = 5.0
    master_key: str | None = field(default=None, repr=False)  # wraps tenant keys at rest; never printed
    max_body: int = 6 * 1024 * 1024
    body_budget: int = 256 * 1024 * 1024  # request-body bytes being received at once, all requests together
    max_response: int = 6 * 1024 * 1024  # Lambda's own payload limit: a larger answer could not be sent there
    debug: bool = False
    s3_refresh: float = 30.0
    gcs_refresh: float = 30.0  # seconds between listings of a gs:// plugin path
    notify: str = ""  # DPMSF_NOTIFY: plugin changes told to every replica (postgresql:// or "off"; sources/changes.py)
    reload: bool = True
    state_dir: str = ".dpmsf"
    replay_store: str = "memory"
    tenants: str = ""
    store: str = ""
    upload_dir: str = ""
    upload_max: int = 256_000
    upload_cpu: float = 2.0  # CPU seconds a child process may spend reading one upload (DPMSF_UPLOAD_CPU)
    sandbox_workers: int = 2
    sandbox_timeout: float = 5.0
    sandbox_memory_mb: int = 256
    sandbox_cpu: float = 2.0
    sandbox_memory_total_mb: int = 1024  # all guests together, measured (DPMSF_SANDBOX_MEMORY_MB_TOTAL)
    sandbox_template: bool = True  # guests forked from a started template (DPMSF_SANDBOX_TEMPLATE), not started afresh
    cors_origins: tuple[str, ...] = ("*",)
    base_path: str = ""
    sync_inline: bool = False
    function_timeout: float = 29.0  # API Gateway's integration limit; 0 = none
    grace_seconds: float = 20.0  # dpmsf serve on SIGTERM: in-flight requests may finish this long (DPMSF_GRACE_SECONDS)
    quotas: Quotas = Quotas()  # every tenant's defaults; a tenant's stored overrides are laid over them
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tenants_url(self) -> str:
        return self.tenants or f"sqlite:///{os.path.join(self.state_dir, 'tenants.db')}"

    @property
    def store_url(self) -> str:
        return self.store or f"sqlite:///{os.path.join(self.state_dir, 'store.db')}"

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, dotenv: str | Path | None = ".env") -> Settings:
        """Read ``env`` (default ``os.environ`` over ``.env``); raise ConfigError naming the first bad variable."""
        merged: dict[str, str] = {}
        if dotenv and os.path.isfile(dotenv):
            from dotenv import dotenv_values  # only paid when a .env exists

            merged.update({k: v for k, v in dotenv_values(dotenv).items() if v is not None})
        merged.update(os.environ if env is None else env)
        return _parse(merged)


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"Config '{name}' has value '{raw}'. Not a valid int.") from None
    if value < minimum:
        raise ConfigError(f"Config '{name}' has value '{raw}'. Must be at least {minimum}.")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"Config '{name}' has value '{raw}'. Not a valid number.") from None
    if value < minimum:
        raise ConfigError(f"Config '{name}' has value '{raw}'. Must be at least {minimum}.")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    low = raw.strip().lower()
    if low in ON_WORDS:
        return True
    if low in OFF_WORDS:
        return False
    raise ConfigError(f"Config '{name}' has value '{raw}'. Not a valid bool. Choices are: 1|0|true|false|yes|no|on|off")


_SHARED = ("dynamodb", "firestore")  # backends every instance of a deployment can share


def _backend_url(env: Mapping[str, str], name: str, default: str, kinds: tuple[str, ...]) -> str:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    parse_backend_url(raw, f"Config '{name}'", kinds)  # the rule the backends use: a bad URL stops start-up
    return raw


def _master_key(env: Mapping[str, str], name: str = "DPMSF_MASTER_KEY") -> str | None:
    """``DPMSF_MASTER_KEY`` (or ``DPMSF_ADMIN_KEY``): 32 bytes as base64url, checked at start-up so a bad one stops
    the server with this message instead of answering 500 on the first token. The error never quotes the value."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    text = raw.rstrip("=")
    try:
        ok = (
            re.fullmatch(r"[A-Za-z0-9_-]+", text) is not None
            and len(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))) == 32
        )
    except (ValueError, binascii.Error):
        ok = False
    if not ok:
        raise ConfigError(
            f"Config '{name}' is not valid (the value is a secret: not shown). Expected 32 bytes as"
            " base64url (43 characters), e.g. from dpmsf_core.tenancy.tokens.generate_key()."
        )
    return text


def _parse(env: Mapping[str, str]) -> Settings:
    """Every setting read and checked in one pass, in the order a bad one is reported; each rule its own step."""
    lam = on_lambda(env)
    num = _int(env, "NUM_URL_PARMS", 10)
    names = _url_parm_names(env, num)
    plugins = _plugin_folders(env)
    admin_id = _admin_id(env)
    state_default = "/tmp/dpmsf" if lam else ".dpmsf"
    table = (env.get("DPMSF_TABLE") or "").strip()
    replay_default = f"dynamodb://{table}" if (lam and table) else "memory"
    dyn_default = f"dynamodb://{table}" if (lam and table) else ""
    base_path = _base_path(env)
    cors_raw = env.get("DPMSF_CORS_ORIGINS")
    cors = tuple(o.strip() for o in (cors_raw if cors_raw is not None else "*").split(",") if o.strip())
    token_max_ttl = _int(env, "DPMSF_TOKEN_MAX_TTL", 300, minimum=1)
    token_ttl = _token_ttl(env, token_max_ttl)
    replay_store, tenants, store = _state_urls(env, replay_default, dyn_default)
    return Settings(
        num_url_parms=num,
        url_parm_names=names,
        plugins=plugins,
        admin_id=admin_id,
        admin_key=_master_key(env, "DPMSF_ADMIN_KEY"),
        require_tokens=_bool(env, "DPMSF_REQUIRE_TOKENS", False),
        token_ttl=token_ttl,
        token_max_ttl=token_max_ttl,
        key_cache_seconds=_float(env, "DPMSF_KEY_CACHE", 5.0, minimum=0.0),
        token_skew=_float(env, "DPMSF_TOKEN_SKEW", 5.0),
        master_key=_master_key(env),
        max_body=_int(env, "DPMSF_MAX_BODY", 6 * 1024 * 1024, minimum=1),
        body_budget=_int(env, "DPMSF_BODY_BUDGET_MB", 256, minimum=1) * 1024 * 1024,
        max_response=_int(env, "DPMSF_MAX_RESPONSE", 6 * 1024 * 1024, minimum=1),
        debug=_bool(env, "DPMSF_DEBUG", False),
        s3_refresh=_float(env, "DPMSF_S3_REFRESH", 30.0),
        gcs_refresh=_float(env, "DPMSF_GCS_REFRESH", 30.0),
        notify=_notify(env),
        reload=_bool(env, "DPMSF_RELOAD", True),
        state_dir=(env.get("DPMSF_STATE_DIR") or "").strip() or state_default,
        replay_store=replay_store,
        tenants=tenants,
        store=store,
        upload_dir=(env.get("DPMSF_UPLOAD_DIR") or "").strip(),
        upload_max=_int(env, "DPMSF_UPLOAD_MAX", 256_000, minimum=1),
        upload_cpu=_float(env, "DPMSF_UPLOAD_CPU", 2.0, minimum=0.5),
        # at most this many guests, and as many as fit in DPMSF_SANDBOX_MEMORY_MB_TOTAL (a guest forked from the
        # template takes ~4-7 MB, one started from nothing ~25 MB); one tenant holds at most all but one
        sandbox_workers=_int(env, "DPMSF_SANDBOX_WORKERS", 16 if lam else 256, minimum=1),
        sandbox_memory_total_mb=_int(
            env, "DPMSF_SANDBOX_MEMORY_MB_TOTAL", _guests_memory_default(env, lam), minimum=16
        ),
        sandbox_timeout=_float(env, "DPMSF_SANDBOX_TIMEOUT", 5.0, minimum=0.1),
        sandbox_memory_mb=_int(env, "DPMSF_SANDBOX_MEMORY_MB", 256, minimum=32),
        sandbox_cpu=_float(env, "DPMSF_SANDBOX_CPU", 2.0, minimum=0.5),
        sandbox_template=_bool(env, "DPMSF_SANDBOX_TEMPLATE", True),
        cors_origins=cors,
        base_path=base_path,
        sync_inline=_bool(env, "DPMSF_SYNC_INLINE", lam),
        function_timeout=_float(env, "DPMSF_FUNCTION_TIMEOUT", 0.0 if lam else 29.0),  # Lambda enforces its own
        grace_seconds=_float(env, "DPMSF_GRACE_SECONDS", 20.0),
        quotas=_quotas(env),
    )


def _state_urls(env: Mapping[str, str], replay_default: str, dyn_default: str) -> tuple[str, str, str]:
    """``DPMSF_REPLAY_STORE``, ``DPMSF_TENANTS`` and ``DPMSF_STORE``; a Firestore one with neither its emulator nor
    credentials is refused now, not answered 503 on every request (and nothing of Google is read otherwise)."""
    replay_store = _backend_url(env, "DPMSF_REPLAY_STORE", replay_default, ("memory", "sqlite", *_SHARED, "postgresql"))
    tenants = _backend_url(env, "DPMSF_TENANTS", dyn_default, ("sqlite", *_SHARED, "postgresql"))
    store = _backend_url(env, "DPMSF_STORE", dyn_default, ("sqlite", *_SHARED, "postgresql"))
    backends = (("DPMSF_STORE", store), ("DPMSF_TENANTS", tenants), ("DPMSF_REPLAY_STORE", replay_store))
    if any(url.startswith("firestore://") for _, url in backends):
        from .gcp.credentials import check_firestore

        check_firestore(env, backends)
    return replay_store, tenants, store


def _notify(env: Mapping[str, str]) -> str:
    """``DPMSF_NOTIFY``: empty (the first postgresql:// URL of the stores, if any), ``off``, or a postgresql:// URL."""
    raw = (env.get("DPMSF_NOTIFY") or "").strip()
    if raw in ("", "off"):
        return raw
    try:
        parse_backend_url(raw, "Config 'DPMSF_NOTIFY'", ("postgresql",))
    except ConfigError as exc:
        raise ConfigError(f"{exc}|off") from None
    return raw


def _url_parm_names(env: Mapping[str, str], num: int) -> tuple[str, ...]:
    """The names URL segments bind to (``URL_PARM1``.. else ``parm_1``..): each a valid parameter name, none twice,
    since a function receives them as keyword arguments."""
    names: list[str] = []
    for i in range(1, num + 1):
        raw = env.get(f"URL_PARM{i}")
        name = raw.strip() if raw and raw.strip() else f"parm_{i}"
        if not _IDENT.match(name):
            raise ConfigError(
                f"Config 'URL_PARM{i}' has value '{raw}'. Not a valid parameter name: use letters, digits and '_' "
                "(no dashes)."
            )
        names.append(name)
    if len(set(names)) != len(names):
        raise ConfigError(f"Config 'URL_PARM1..{num}' name the same parameter twice: {names}")
    return tuple(names)


def _plugin_folders(env: Mapping[str, str]) -> tuple[str, ...]:
    """``DPMSF_PLUGINS`` as folders and sources; at least one, or nothing would ever be served."""
    plugins_raw = env.get("DPMSF_PLUGINS") or env.get("plugins") or "."
    plugins = tuple(split_plugin_path(plugins_raw))
    if not plugins:
        raise ConfigError(
            f"Config 'DPMSF_PLUGINS' has value '{plugins_raw}'. Name at least one folder ('.' = bundled)."
        )
    return plugins


def _admin_id(env: Mapping[str, str]) -> str | None:
    """``ADMIN_ID`` in the canonical UUID form, so one admin is not two spellings of the same id."""
    admin_id = (env.get("ADMIN_ID") or "").strip() or None
    if admin_id:
        try:
            import uuid  # only with ADMIN_ID set (it imports platform)

            admin_id = str(uuid.UUID(admin_id))
        except ValueError:
            raise ConfigError(f"Config 'ADMIN_ID' has value '{admin_id}'. Not a valid UUID.") from None
    return admin_id


def _base_path(env: Mapping[str, str]) -> str:
    """``DPMSF_BASE_PATH`` without its trailing slash; it must start with one, as the paths it prefixes do."""
    base_path = (env.get("DPMSF_BASE_PATH") or "").strip().rstrip("/")
    if base_path and not base_path.startswith("/"):
        raise ConfigError(f"Config 'DPMSF_BASE_PATH' has value '{base_path}'. Must start with '/'.")
    return base_path


def _token_ttl(env: Mapping[str, str], token_max_ttl: int) -> float:
    """``DPMSF_TOKEN_TTL``, at most ``DPMSF_TOKEN_MAX_TTL``: the server would refuse the next tokens it hands out."""
    token_ttl = _float(env, "DPMSF_TOKEN_TTL", 60.0, minimum=1.0)
    if token_ttl > token_max_ttl:
        raise ConfigError(
            f"Config 'DPMSF_TOKEN_TTL' has value '{env.get('DPMSF_TOKEN_TTL')}'. Must be at most"
            f" DPMSF_TOKEN_MAX_TTL ({token_max_ttl})."
        )
    return token_ttl


def _guests_memory_default(env: Mapping[str, str], lam: bool) -> int:
    """1 GB off Lambda (half a 2 GB machine: ~150 warm guests); on Lambda, a third of the function's memory."""
    if not lam:
        return 1024
    try:
        return max(64, int(env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")) // 3)
    except ValueError:
        return 170


def _quotas(env: Mapping[str, str]) -> Quotas:
    try:
        return Quotas.from_env(env)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
