"""Introspection mode: no ``@expose`` at all, so every public function defined here is an endpoint (GET, POST).

GET /rest/services/add/?a=1&b=2        -> {"results": 3}
GET /rest/services/introspected/upper/?text=abc
"""

from os.path import join  # noqa: F401 - imported functions are never exposed


def add(a: int, b: int = 0) -> int:
    """Add two integers; the annotations convert and validate query strings (a=x answers 422)."""
    return a + b


def upper(text: str) -> str:
    """Upper-case a string."""
    return _shout(text)


def _shout(text: str) -> str:
    return text.upper()


class NotAnEndpoint:
    """Classes are never exposed."""
