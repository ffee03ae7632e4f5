"""On/off switches read from the environment: the one list of words for on and for off (stdlib only, no imports,
so the Lambda log and metric formats can read their switches before anything else loads)."""

from __future__ import annotations

ON_WORDS = frozenset({"1", "true", "yes", "on"})
OFF_WORDS = frozenset({"", "0", "false", "no", "off"})


def switched_on(raw: str | None) -> bool:
    """``1``, ``true``, ``yes`` or ``on`` in any case and spacing; anything else (unset included) is off."""
    return (raw or "").strip().lower() in ON_WORDS


def switched_off(raw: str | None) -> bool:
    """Unset, empty, ``0``, ``false``, ``no`` or ``off``; anything else (a sample rate such as ``0.1``) is on."""
    return (raw or "").strip().lower() in OFF_WORDS
