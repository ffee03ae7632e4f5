"""No marks at all: every own public def is exposed for GET and POST under its own name."""

from os.path import join  # noqa: F401 - imported: never exposed


def public(a, b=1):
    """Public one."""
    return a


async def also_public():
    return 1


def _private():
    return 0


def redefined():
    return "first"


def later():
    return "later"


def redefined():  # noqa: F811 - the later def rebinds the name where it was first bound
    """The second definition."""
    return "second"


class Thing:
    def method(self):
        return 1


lam = lambda: 1  # noqa: E731 - a lambda is not a function under its own name
alias = public
