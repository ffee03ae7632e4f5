"""A tenant's quota overrides as the tenant registries keep them: checked before they are stored, read back
tolerantly (a damaged stored value means the defaults, never a failure on every request)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .quotas import Quotas

__all__ = ["changed_quotas", "quotas_json"]


def changed_quotas(current: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, float]:
    """A tenant's quota overrides after ``changes`` (a value of None clears that override, back to the default);
    ValueError naming an unknown quota or a bad value, before anything is stored."""
    known = Quotas().as_dict()
    result: dict[str, float] = {name: value for name, value in current.items() if name in known}
    for name, value in changes.items():
        if name not in known:
            raise ValueError(f"Unknown quota {name!r}. Expected one of: {', '.join(known)}.")
        if value is None:
            result.pop(name, None)
            continue
        try:
            coerced = getattr(Quotas().merged({name: value}), name)
            if isinstance(coerced, int) and float(value) != coerced:  # int() would quietly drop a fraction
                raise ValueError("Not a whole number.")
        except ValueError as exc:
            raise ValueError(f"Quota {name}={value!r} is not valid. {exc}") from None
        result[name] = coerced
    return result


def quotas_json(text: str | None) -> dict[str, float]:
    """The stored overrides; a damaged value counts as none (the defaults), never as a crash on every request."""
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
