"""Marked functions: methods, API names, auth, stacked decorators, async, a duplicate API name."""

from json import dumps  # noqa: F401 - imported: never exposed

from dpmsf_core import expose


@expose.endpoint(method="GET|PUT", API="first")
def one(x=1):
    """Summary of one.

    More text that is not the summary.
    """
    return x


@expose.endpoint(method=["POST"], API="first")
def two():
    return 2


@expose.endpoint(API="outer", auth=True)
@expose.endpoint(API="inner")
def stacked():
    """Stacked: the outermost spec wins."""
    return 3


@expose.endpoint
async def run_async(a, b=2):
    return a + b


@expose.endpoint(method="GET|POST".split("|"))
def split_methods():
    return 4


@expose.event(source="sqs", match="orders")
def on_order(record):
    return record


def not_marked():
    return 5
