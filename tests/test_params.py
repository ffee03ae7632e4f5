"""Argument assembly and signature binding as pure functions (no app, no server)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from dpmsf_core.context import RequestInfo
from dpmsf_core.errors import BadRequest, UnprocessableArguments, UnsupportedMediaType
from dpmsf_core.params import CallPlan, assemble, parse_body, parse_query

NAMES = tuple(f"parm_{i}" for i in range(1, 11))


def test_parse_query_repeats_become_lists_and_blanks_stay() -> None:
    assert parse_query(b"a=1&a=2&b=&c=x%2Cy") == {"a": ["1", "2"], "b": "", "c": "x,y"}


def test_assemble_precedence_and_map() -> None:
    args, kwargs = assemble(
        {"parm_1": "q", "k": "q", "only_q": "1"},
        ["u1", "u2"],
        {"args": [1], "k": "body", "__map__": {"parm_2": "second"}},
        NAMES,
    )
    assert args == [1]
    assert kwargs == {"parm_1": "u1", "k": "body", "only_q": "1", "second": "u2"}


def test_parse_body_kinds() -> None:
    assert parse_body(b"", "application/json") is None
    assert parse_body(b'{"a": 1}', "application/json; charset=utf-8") == {"a": 1}
    assert parse_body(b'{"a": 1}', None) == {"a": 1}
    assert parse_body(b'{"a": 1}', "application/vnd.api+json") == {"a": 1}
    assert parse_body(b"a=1&b=2", "application/x-www-form-urlencoded") == {"a": "1", "b": "2"}
    with pytest.raises(BadRequest):
        parse_body(b"{", "application/json")
    with pytest.raises(BadRequest):
        parse_body(b"[1]", "application/json")
    with pytest.raises(UnsupportedMediaType):
        parse_body(b"x", "text/csv")
    assert parse_body(b"x", "text/csv", raw_ok=True) is None


def request() -> RequestInfo:
    return RequestInfo(method="GET", path="/", headers={}, query={}, body=b"")


def test_free_functions_get_everything_untouched() -> None:
    plan = CallPlan(lambda *a, **k: None)
    assert plan.free
    assert plan.bind([1], {"x": "1"}, request(), None) == ([1], {"x": "1"})


def test_declared_names_only_converted_by_annotation() -> None:
    def f(a: int, flag: bool = False, tags: list[int] | None = None, raw=None):
        pass

    plan = CallPlan(f)
    args, kwargs = plan.bind(
        [], {"a": "5", "flag": "true", "tags": "7", "raw": "r", "extra": "dropped"}, request(), None
    )
    assert (args, kwargs) == ([5, True, [7], "r"], {})


def test_missing_and_invalid_arguments_name_the_parameter() -> None:
    def f(a: int, b: int):
        pass

    with pytest.raises(UnprocessableArguments) as info:
        CallPlan(f).bind([], {"a": "1"}, request(), None)
    assert "'b'" in info.value.detail
    with pytest.raises(UnprocessableArguments) as info:
        CallPlan(f).bind([], {"a": "x", "b": "2"}, request(), None)
    assert info.value.errors[0]["loc"] == ["arguments", "a"]
    assert "'a'" in info.value.detail


def test_request_injection_and_raw_body() -> None:
    def f(req: RequestInfo, n: int = 1):
        pass

    plan = CallPlan(f)
    assert plan.accepts_raw_body
    info = request()
    assert plan.bind([], {"n": "2"}, info, None) == ([info, 2], {})


class Task(BaseModel):
    title: str
    done: bool = False


def test_single_model_parameter_takes_the_body() -> None:
    def create(task: Task):
        pass

    args, _ = CallPlan(create).bind([], {}, request(), {"title": "t", "args": [], "__map__": {}})
    assert args == [Task(title="t")]
    with pytest.raises(UnprocessableArguments):
        CallPlan(create).bind([], {}, request(), {"done": "nope"})


def test_async_function_signature() -> None:
    async def f(x: float):
        pass

    assert CallPlan(f).bind([], {"x": "1.5"}, request(), None) == ([1.5], {})


@given(st.text(alphabet="ab=&;é1 ?#", max_size=12))
def test_a_query_with_nothing_to_decode_parses_as_parse_qsl_does(raw: str) -> None:
    from urllib.parse import parse_qsl

    from dpmsf_core.params import _plain_pairs

    assert _plain_pairs(raw) == parse_qsl(raw, keep_blank_values=True)
