"""The type rules of ``dpmsf_core``: mypy runs strict from the project's own config (the test command's plain
``mypy``), every ``type: ignore`` names its error code and says why, and the Lambda context Protocol refuses what
AWS's context object would not have, while ``testing.LambdaContext`` fits it."""

from __future__ import annotations

import io
import re
import tokenize
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dpmsf_core"
_IGNORE = re.compile(r"#\s*type:\s*ignore\b(?P<code>\[[^\]]*\])?(?P<rest>.*)")


def test_mypy_is_strict_in_the_test_command() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mypy"]
    assert config["strict"] is True
    assert "ignore-without-code" in config["enable_error_code"]
    assert config["files"] == ["dpmsf_core"]
    # the plain command, so the settings above are the ones it runs with
    assert ".venv/bin/mypy\n" in (ROOT / "run-tests.sh").read_text(encoding="utf-8")


def _ignores(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, the ignore comment, the comment line just above it or None) for each ``type: ignore`` in ``path``."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT and _IGNORE.search(tok.string):
            above = lines[tok.start[0] - 2].strip() if tok.start[0] > 1 else ""
            found.append((tok.start[0], tok.string, above if above.startswith("#") else None))
    return found


def test_every_type_ignore_names_its_code_and_says_why() -> None:
    bad = []
    seen = 0
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, comment, above in _ignores(path):
            seen += 1
            match = _IGNORE.search(comment)
            assert match is not None
            reason = match.group("rest").strip().lstrip("#").strip()
            if not match.group("code") or not (reason or above):
                bad.append(f"{path.relative_to(ROOT)}:{line}: {comment}")
    assert seen > 0  # the scan reads comments at all
    assert not bad, "a type: ignore without [code] or without a reason (after it, or on the line above):\n" + "\n".join(
        bad
    )


def test_the_ignore_scan_sees_a_bare_ignore_and_one_without_reason(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "x = 1  # type: ignore\n"
        "y = 2  # type: ignore[assignment]\n"
        "# the reason, above\n"
        "z = 3  # type: ignore[assignment]\n"
        "w = 4  # type: ignore[misc]  # the reason, after\n",
        encoding="utf-8",
    )
    found = _ignores(sample)
    assert [(line, above) for line, _, above in found] == [(1, None), (2, None), (4, "# the reason, above"), (5, None)]
    codes = [m.group("code") for _, c, _ in found if (m := _IGNORE.search(c))]
    assert codes == [None, "[assignment]", "[assignment]", "[misc]"]


@pytest.mark.slow
def test_the_lambda_context_protocol_refuses_a_typo_and_a_stand_in_without_its_methods(tmp_path: Path) -> None:
    """(That ``testing.LambdaContext`` fits is checked by the strict run itself: ``dpmsf invoke`` passes one to the
    handler, whose context is this Protocol.)"""
    api = pytest.importorskip("mypy.api", reason="mypy is a dev extra (DPMSF_VENV_EXTRAS=dev)")
    snippet = tmp_path / "uses_context.py"
    snippet.write_text(
        "from dataclasses import dataclass\n"
        "from dpmsf_core.context import LambdaContext, RequestInfo\n"
        "\n"
        "def request_id(context: LambdaContext) -> str:\n"
        "    return context.aws_request_idd\n"  # line 5: a typo
        "\n"
        "class OnlyAnId:\n"
        "    aws_request_id = 'x'\n"
        "\n"
        "@dataclass\n"
        "class LikeAws:\n"  # AWS's runtime: plain attributes, the memory as the environment's string
        "    aws_request_id: str = 'r'\n"
        "    function_name: str = 'f'\n"
        "    function_version: str = '$LATEST'\n"
        "    invoked_function_arn: str = 'arn:aws:lambda:us-east-1:1:function:f'\n"
        "    memory_limit_in_mb: str = '512'\n"
        "    log_group_name: str = '/aws/lambda/f'\n"
        "    log_stream_name: str = 's'\n"
        "    def get_remaining_time_in_millis(self) -> int:\n"
        "        return 1000\n"
        "\n"
        "request_id(OnlyAnId())\n"  # line 22: no function_name, no get_remaining_time_in_millis, ...
        "request_id(LikeAws())\n"
        "info = RequestInfo('GET', '/', {}, {}, b'', context=LikeAws())\n"
        "memory: int = info.context.memory_limit_in_mb if info.context else 0\n",  # line 25: may be a str, and says so
        encoding="utf-8",
    )
    # the project's settings and cache: after the test command's own mypy run, only the snippet is checked anew
    config, cache = ROOT / "pyproject.toml", ROOT / ".mypy_cache"
    out, err, status = api.run(["--config-file", str(config), "--cache-dir", str(cache), str(snippet)])
    assert status == 1, out + err
    lines = sorted({int(m.group(1)) for m in re.finditer(r"uses_context\.py:(\d+): error", out)})
    assert lines == [5, 22, 25], out
    assert '"LambdaContext" has no attribute "aws_request_idd"' in out
