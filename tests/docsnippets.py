"""The code blocks of README.md and docs/, so the tests run the examples exactly as a reader copies them.

A block is a fenced code block with its language (```python, ```bash, ```console). A Python block whose first
line is ``# plugins/<name>.py`` is a plugin file of that name. A shell block whose first line is
``# not run here: <reason>`` is left out of tests/test_docs_examples.py, which says so with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
NOT_RUN = "# not run here:"
SHELLS = ("bash", "sh", "shell", "console")


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is (file, line), its language and its text (dedented as written)."""

    file: Path
    line: int
    lang: str
    text: str

    @property
    def id(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"

    @property
    def skip_reason(self) -> str | None:
        first = self.text.lstrip().splitlines()[0] if self.text.strip() else ""
        return first[len(NOT_RUN) :].strip() if first.startswith(NOT_RUN) else None


def documents() -> list[Path]:
    """README.md and every page of the documentation site."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(path: Path) -> list[Block]:
    text = path.read_text(encoding="utf-8")
    out = []
    for match in FENCE.finditer(text):
        indent = len(match["indent"])
        body = "".join(
            line[indent:] if line[:indent].strip() == "" else line for line in match["body"].splitlines(True)
        )
        out.append(Block(path, text.count("\n", 0, match.start()) + 1, match["lang"], body))
    return out


def shell_blocks() -> list[Block]:
    return [b for path in documents() for b in blocks(path) if b.lang in SHELLS]


def plugin_file(name: str, path: Path | None = None) -> str:
    """The Python block that starts ``# plugins/<name>`` (README.md unless ``path`` says otherwise)."""
    for block in blocks(path or ROOT / "README.md"):
        if block.lang == "python" and block.text.startswith(f"# plugins/{name}\n"):
            return block.text
    raise LookupError(f"no ```python block starting '# plugins/{name}' in {path or 'README.md'}")
