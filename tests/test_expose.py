"""The decorators mark functions (and return them unchanged); bad declarations fail at load time, named."""

from __future__ import annotations

import pytest

from dpmsf_core.errors import PluginError
from dpmsf_core.expose import EndpointSpec, endpoint_spec, event_spec, expose, parse_methods


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        (None, ("GET", "POST")),
        ("GET|PUT|POST", ("GET", "PUT", "POST")),
        ("GET|PUT|POST".split("|"), ("GET", "PUT", "POST")),
        (["GET", "PUT", "POST"], ("GET", "PUT", "POST")),
        (("get", "Delete"), ("GET", "DELETE")),
        ("patch", ("PATCH",)),
        ("GET, HEAD", ("GET", "HEAD")),
        ("GET|GET", ("GET",)),
    ],
)
def test_method_forms(method, expected) -> None:
    assert parse_methods(method) == expected


@pytest.mark.parametrize("method", ["FETCH", ["GET", 5], "", "|", 42, ["CONNECT"]])
def test_bad_methods_are_refused_with_the_allowed_list(method) -> None:
    with pytest.raises(PluginError) as info:
        parse_methods(method)
    assert "method=" in str(info.value)


def test_endpoint_returns_the_function_with_a_frozen_spec() -> None:
    def foo(*args, **kwargs):
        """Doc line.

        More."""

    marked = expose.endpoint(method="GET|PUT|POST", API="hello-world")(foo)
    assert marked is foo
    assert endpoint_spec(foo) == EndpointSpec(
        api="hello-world", methods=("GET", "PUT", "POST"), auth=None, summary="Doc line."
    )
    with pytest.raises(AttributeError):
        endpoint_spec(foo).api = "x"  # type: ignore[misc]


def test_bare_decorator_and_default_api_name() -> None:
    @expose.endpoint
    def plain():
        pass

    assert endpoint_spec(plain).api == "plain" and endpoint_spec(plain).methods == ("GET", "POST")


@pytest.mark.parametrize("api", ["has space", "__dir__", "a/b", ""])
def test_bad_api_names(api: str) -> None:
    with pytest.raises(PluginError):
        expose.endpoint(API=api)(lambda: None)


def test_auth_must_be_a_bool() -> None:
    with pytest.raises(PluginError):
        expose.endpoint(auth="yes")  # type: ignore[arg-type]


def test_event_marks_and_validates_source() -> None:
    @expose.event(source="SQS", match="orders")
    def on_order(record):
        pass

    spec = event_spec(on_order)
    assert (spec.source, spec.match, spec.name) == ("sqs", "orders", "on_order")
    with pytest.raises(PluginError, match="Choices are"):
        expose.event(source="kafka")
