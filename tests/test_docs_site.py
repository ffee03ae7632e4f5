"""The documentation a newcomer navigates: a short README whose links all lead somewhere, and a MkDocs Material
site in docs/ that builds with ``mkdocs build --strict`` (a broken link or anchor fails it, as in CI)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

README = ROOT / "README.md"
PAGES = {
    "guides": ["first-project", "plugins", "calling-convention", "aws", "google-cloud", "tenants", "tokens"]
    + ["storing-data", "testing"],
    "reference": ["configuration", "cli", "errors", "urls"],
}


def _mkdocs() -> list[str]:
    if shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("mkdocs is not installed: pip install -e '.[dev]'")
    return [sys.executable, "-m", "mkdocs"]


def _build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_mkdocs(), "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1", "HOME": str(site.parent)},
    )


def _anchors(markdown: str) -> set[str]:
    """The ids MkDocs' toc gives the headings of a page (lower case, punctuation dropped, spaces to dashes)."""
    out = set()
    for title in re.findall(r"^#{1,6} (.+)$", re.sub(r"```.*?```", "", markdown, flags=re.S), re.M):
        slug = re.sub(r"[^\w\- ]", "", title.replace("`", "").strip().lower())
        out.add(re.sub(r"[ ]+", "-", slug))
    return out


def test_the_site_builds_strict(tmp_path: Path) -> None:
    done = _build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stdout + done.stderr
    for section, names in PAGES.items():
        for name in names:
            assert (tmp_path / "site" / section / name / "index.html").is_file(), (section, name)
    assert (tmp_path / "site" / "layout" / "index.html").is_file()


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    """The strictness CI relies on: a link to a heading that does not exist stops the build, naming it."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    page = copy / "docs" / "guides" / "plugins.md"
    page.write_text(page.read_text() + "\nSee [nowhere](tokens.md#no-such-heading).\n")
    done = _build(copy / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0 and "no-such-heading" in done.stdout + done.stderr


def test_the_readme_is_a_front_page_whose_links_lead_somewhere() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    assert "./runserver.sh" in text and "./run-tests.sh" in text  # the two commands, on the first screen
    links = re.findall(r"\]\((docs/[^)#]+)(?:#([^)]+))?\)", text)
    assert len(links) >= 15
    for path, anchor in links:
        target = ROOT / path
        assert target.is_file(), path
        if anchor:
            assert anchor in _anchors(target.read_text(encoding="utf-8")), f"{path}#{anchor}"
