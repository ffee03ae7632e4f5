"""Whether a ``firestore://`` setting can work here, decided at start from the environment alone.

Without the emulator (``FIRESTORE_EMULATOR_HOST``) the Firestore client asks google-auth for Application Default
Credentials, and google-auth, having found none in the environment or gcloud's files, probes the cloud metadata
server (169.254.169.254, three tries of 3 s each) before failing. Off Google that probe leaves the machine and every
request then answers 503. So a ``firestore://`` store with no emulator and none of the places google-auth would find
credentials in is refused at start, with the command that makes it work. Standard library only, no Google import:
the check costs a few dictionary look-ups and, at most, two ``stat`` calls.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..errors import ConfigError

LOCAL_RUN = "dpmsf gcp-run"
ADC_FILE = "application_default_credentials.json"


def on_google(env: Mapping[str, str]) -> bool:
    """App Engine (not ``GAE_ENV=localdev``: dev_appserver and ``dpmsf gcp-run`` set it), Cloud Run or Functions
    (``K_SERVICE``), or a metadata server named outright (``GCE_METADATA_HOST``): the runtime's own credentials."""
    app_engine = bool(env.get("GAE_SERVICE") or env.get("GAE_ENV")) and env.get("GAE_ENV") != "localdev"
    return app_engine or bool(env.get("K_SERVICE") or env.get("GCE_METADATA_HOST"))


def adc_file(env: Mapping[str, str]) -> Path:
    """gcloud's application-default file (``gcloud auth application-default login`` writes it): in
    ``CLOUDSDK_CONFIG`` when set, else ``~/.config/gcloud`` (google-auth's ``_cloud_sdk.get_config_path``)."""
    config = env.get("CLOUDSDK_CONFIG")
    if config:
        return Path(config) / ADC_FILE
    if os.name == "nt":
        return Path(env.get("APPDATA") or "~") / "gcloud" / ADC_FILE
    home = env.get("HOME") or os.path.expanduser("~")
    return Path(home) / ".config" / "gcloud" / ADC_FILE


def credentials_source(env: Mapping[str, str]) -> str | None:
    """Where the Firestore client would get its credentials here (in words), or None when it would find none."""
    if env.get("FIRESTORE_EMULATOR_HOST"):
        return f"the Firestore emulator at {env['FIRESTORE_EMULATOR_HOST']}"
    if env.get("GOOGLE_APPLICATION_CREDENTIALS"):
        return f"GOOGLE_APPLICATION_CREDENTIALS ({env['GOOGLE_APPLICATION_CREDENTIALS']})"
    if adc_file(env).is_file():
        return f"gcloud's application-default credentials ({adc_file(env)})"
    if on_google(env):
        return "Google's runtime"
    return None


def check_firestore(env: Mapping[str, str], settings: Iterable[tuple[str, str]]) -> None:
    """Raise ConfigError (one line, the command to run) when a ``(name, url)`` of ``settings`` is ``firestore://``
    and nothing here could serve it; return at once when none is (the default path reads nothing more)."""
    used = ", ".join(f"{name}={url}" for name, url in settings if url.startswith("firestore://"))
    if not used:
        return
    path = env.get("GOOGLE_APPLICATION_CREDENTIALS")
    if path and not env.get("FIRESTORE_EMULATOR_HOST") and not Path(path).is_file():
        raise ConfigError(
            f"Firestore is configured ({used}), and GOOGLE_APPLICATION_CREDENTIALS names {path}, which is not a"
            f" file. Point it at a service account key, or unset it and run `{LOCAL_RUN}` for the emulator."
        )
    if credentials_source(env) is None:
        raise ConfigError(
            f"Firestore is configured ({used}), but here is neither its emulator (FIRESTORE_EMULATOR_HOST) nor"
            " Google credentials (GOOGLE_APPLICATION_CREDENTIALS, gcloud's application-default login, Google's"
            f" runtime). Run `{LOCAL_RUN}` in your project (it starts the emulator and points the server at it),"
            " or, for a real project: gcloud auth application-default login"
        )
