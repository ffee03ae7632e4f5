"""DPMSF_TOKEN_MAX_TTL and DPMSF_MASTER_KEY: defaults, parsing, and one clear line for each bad value."""

from __future__ import annotations

import pytest

from dpmsf_core.config import Settings
from dpmsf_core.errors import ConfigError
from dpmsf_core.tenancy.tokens import DEFAULT_MAX_TTL, generate_key


def parse(env: dict[str, str]) -> Settings:
    return Settings.from_env(env, dotenv=None)


def test_defaults() -> None:
    s = parse({})
    assert s.token_max_ttl == DEFAULT_MAX_TTL == 300
    assert s.master_key is None


def test_values_are_read() -> None:
    key = generate_key()
    s = parse({"DPMSF_TOKEN_MAX_TTL": " 900 ", "DPMSF_TOKEN_TTL": "900", "DPMSF_MASTER_KEY": f" {key}= "})
    assert (s.token_max_ttl, s.token_ttl, s.master_key) == (900, 900.0, key)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DPMSF_TOKEN_MAX_TTL": "long"}, "Config 'DPMSF_TOKEN_MAX_TTL' has value 'long'. Not a valid int."),
        ({"DPMSF_TOKEN_MAX_TTL": "1.5"}, "Config 'DPMSF_TOKEN_MAX_TTL' has value '1.5'. Not a valid int."),
        ({"DPMSF_TOKEN_MAX_TTL": "0"}, "Config 'DPMSF_TOKEN_MAX_TTL' has value '0'. Must be at least 1."),
        (
            {"DPMSF_TOKEN_TTL": "301"},
            "Config 'DPMSF_TOKEN_TTL' has value '301'. Must be at most DPMSF_TOKEN_MAX_TTL (300).",
        ),
        (
            {"DPMSF_TOKEN_TTL": "60", "DPMSF_TOKEN_MAX_TTL": "30"},
            "Config 'DPMSF_TOKEN_TTL' has value '60'. Must be at most DPMSF_TOKEN_MAX_TTL (30).",
        ),
    ],
)
def test_bad_lifetimes_are_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(env)
    assert str(info.value) == message


@pytest.mark.parametrize(
    "bad", ["short", generate_key()[:-1], generate_key() + "AA", "!" * 43, generate_key()[:-2] + "+/"]
)
def test_bad_master_key_is_one_line_that_hides_the_value(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse({"DPMSF_MASTER_KEY": bad})
    text = str(info.value)
    assert text.startswith("Config 'DPMSF_MASTER_KEY' is not valid") and "\n" not in text
    assert bad not in text and "32 bytes" in text


def test_master_key_is_not_in_settings_repr() -> None:
    key = generate_key()
    assert key not in repr(parse({"DPMSF_MASTER_KEY": key}))
