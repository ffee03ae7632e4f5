"""Settings: defaults, every variable parsed, one clear line naming the variable for each bad value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dpmsf_core.config import BUNDLED_PLUGINS, Settings
from dpmsf_core.errors import ConfigError


def test_defaults() -> None:
    s = Settings.from_env({}, dotenv=None)
    assert s.num_url_parms == 10
    assert s.url_parm_names == tuple(f"parm_{i}" for i in range(1, 11))
    assert s.plugins == (".",)
    assert s.max_body == 6 * 1024 * 1024
    assert (s.require_tokens, s.debug, s.sync_inline) == (False, False, False)
    assert s.replay_store == "memory"
    # guests counted by memory (1 GB: ~150 forked from the template), at most 256; one tenant holds all but one
    assert (s.sandbox_workers, s.sandbox_memory_total_mb, s.sandbox_template) == (256, 1024, True)
    assert os.path.basename(BUNDLED_PLUGINS) == "plugins" and os.path.isdir(BUNDLED_PLUGINS)


def test_url_param_names_and_count() -> None:
    s = Settings.from_env({"NUM_URL_PARMS": "3", "URL_PARM2": "slug"}, dotenv=None)
    assert s.url_parm_names == ("parm_1", "slug", "parm_3")


def test_plugins_path_list_keeps_s3_urls_whole() -> None:
    s = Settings.from_env({"DPMSF_PLUGINS": ".:s3://bucket/pre/fix:/opt/more"}, dotenv=None)
    assert s.plugins == (".", "s3://bucket/pre/fix", "/opt/more")
    assert Settings.from_env({"plugins": "/a:/b"}, dotenv=None).plugins == ("/a", "/b")


def test_lambda_defaults() -> None:
    s = Settings.from_env({"AWS_LAMBDA_FUNCTION_NAME": "f", "DPMSF_TABLE": "t"}, dotenv=None)
    assert s.state_dir == "/tmp/dpmsf" and s.sync_inline and s.function_timeout == 0
    assert (s.replay_store, s.tenants_url, s.store_url) == ("dynamodb://t",) * 3
    assert s.sandbox_workers == 16  # one request at a time per instance: fewer warm guests, kept for many tenants
    assert s.sandbox_memory_total_mb == 170  # a third of the function's memory (512 MB unless it says)


def test_dotenv_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("NUM_URL_PARMS=4\nURL_PARM1=first\n")
    s = Settings.from_env({"NUM_URL_PARMS": "2"}, dotenv=env_file)
    assert s.url_parm_names == ("first", "parm_2")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NUM_URL_PARMS": "abc"}, "Config 'NUM_URL_PARMS' has value 'abc'. Not a valid int."),
        ({"NUM_URL_PARMS": "-1"}, "Config 'NUM_URL_PARMS' has value '-1'. Must be at least 0."),
        ({"URL_PARM3": "has-dash"}, "Config 'URL_PARM3' has value 'has-dash'. Not a valid parameter name"),
        ({"URL_PARM1": "x", "URL_PARM2": "x"}, "Config 'URL_PARM1..10' name the same parameter twice"),
        ({"DPMSF_MAX_BODY": "lots"}, "Config 'DPMSF_MAX_BODY' has value 'lots'. Not a valid int."),
        ({"DPMSF_DEBUG": "maybe"}, "Config 'DPMSF_DEBUG' has value 'maybe'. Not a valid bool."),
        ({"ADMIN_ID": "root"}, "Config 'ADMIN_ID' has value 'root'. Not a valid UUID."),
        ({"DPMSF_STORE": "mongo://x"}, "Config 'DPMSF_STORE' has value 'mongo://x'. Choices are:"),
        ({"DPMSF_REPLAY_STORE": "sqlite://"}, "Config 'DPMSF_REPLAY_STORE' has value 'sqlite://'."),
        ({"DPMSF_S3_REFRESH": "soon"}, "Config 'DPMSF_S3_REFRESH' has value 'soon'. Not a valid number."),
        ({"DPMSF_BASE_PATH": "api"}, "Config 'DPMSF_BASE_PATH' has value 'api'. Must start with '/'."),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env, dotenv=None)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("bad", ["not-a-key", "c2hvcnQ", "A" * 44 + "!"])
def test_a_bad_admin_key_stops_start_up_naming_it_never_quoting_it(bad: str, tmp_path: Path) -> None:
    """Before: a bad DPMSF_ADMIN_KEY started fine and answered 500 on the first token. Now start-up stops."""
    from dpmsf_core.tenancy.tokens import generate_key

    admin = "8c4c1a5e-3f4b-4a53-9d1e-2f0f8f1b9a11"
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"ADMIN_ID": admin, "DPMSF_ADMIN_KEY": bad}, dotenv=None)
    assert "Config 'DPMSF_ADMIN_KEY' is not valid" in str(caught.value) and bad not in str(caught.value)
    good = generate_key()
    assert Settings.from_env({"ADMIN_ID": admin, "DPMSF_ADMIN_KEY": good}, dotenv=None).admin_key == good
    done = subprocess.run(
        [sys.executable, "-m", "dpmsf_core", "serve", "--port", "0", "--plugins", str(tmp_path)],
        env={**os.environ, "ADMIN_ID": admin, "DPMSF_ADMIN_KEY": bad, "DPMSF_STATE_DIR": str(tmp_path / "state")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "Config 'DPMSF_ADMIN_KEY' is not valid" in done.stderr, done.stderr
    assert bad not in done.stderr + done.stdout and "Traceback" not in done.stderr
