"""Names that stay the admin's while the admin's module that declares them fails to load.

A trusted module that fails to import serves nothing, so without this its module name and API names were free:
a tenant's module or API of the same name received the admin's calls (query, body, ``X-Api-Key``). While such
a module is failing, its names are reserved: a tenant's module of that name is not served, and a tenant's API
of that name is reachable only qualified by the tenant's own module name. An unqualified call then finds
nothing and the dispatcher answers 503 naming the failing module.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from .snapshot import ModuleEntry, ModuleReport

_DECLARED = re.compile(r"^\s*(?:async\s+)?def\s+(\w+)\s*\(|\b(?:API|path)\s*=\s*[\"']([^\"'/{]+)", re.MULTILINE)


def declared_names(path: str) -> set[str]:
    """Every name a module's text may expose (``def name(``, ``API="name"``, ``path="name/..."``), read as
    text: the module could not be imported, and may not even parse."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            source = fh.read(1 << 20)
    except OSError:
        return set()
    return {a or b for a, b in _DECLARED.findall(source)}


def reserved_names(reports: Iterable[ModuleReport], owned_folders: set[str]) -> set[str]:
    """The module names and declared API names of trusted modules (not uploads) that failed to load."""
    names: set[str] = set()
    for report in reports:
        if report.status == "error" and report.trusted and os.path.realpath(report.folder) not in owned_folders:
            names |= {report.name, report.real_name, *declared_names(report.source)}
    return names


def withhold(modules: dict[str, ModuleEntry], reports: list[ModuleReport], reserved: set[str]) -> list[ModuleReport]:
    """Take tenants' modules named like a reserved name out of ``modules``; their reports say why."""
    for public in [p for p, e in modules.items() if not e.trusted and {p, e.real_name} & reserved]:
        entry = modules.pop(public)
        why = f"the name {public!r} is the admin's (its module failed to load): {entry.path} is not served"
        reports = [
            ModuleReport(**{**vars(r), "status": "conflict", "error": why, "endpoints": []})
            if r.source == entry.path
            else r
            for r in reports
        ]
    return reports
