"""The Lambda adapter's scope: the byte-encoded parts appear on first read, by every way a dict is read."""

from __future__ import annotations

from dpmsf_core.aws.scope import LazyScope


def scope() -> LazyScope:
    return LazyScope(
        {
            "type": "http",
            "dpmsf.headers": {"host": "h", "x-a": "1, 2"},
            "dpmsf.params": {"name": ["Ada"], "tag": ["a b", "c"]},
        }
    )


def test_headers_and_query_string_are_built_on_first_read_and_kept() -> None:
    s = scope()
    assert dict.__contains__(s, "headers") is False
    assert s["headers"] == [(b"host", b"h"), (b"x-a", b"1, 2")]
    assert s["headers"] is s["headers"]
    assert s.get("query_string") == b"name=Ada&tag=a+b&tag=c"
    assert "headers" in s and "query_string" in s and "missing" not in s
    assert s.get("missing", 7) == 7


def test_copies_and_iteration_see_every_key() -> None:
    for copy in (dict(scope()), {**scope()}, scope().copy()):
        assert copy["headers"] == [(b"host", b"h"), (b"x-a", b"1, 2")] and copy["query_string"].startswith(b"name=")
    assert set(scope()) >= {"type", "headers", "query_string"} and len(scope()) == 5


def test_a_payload_2_scope_keeps_its_own_query_string() -> None:
    s = LazyScope({"dpmsf.headers": {}, "query_string": b"a=1"})
    assert s["query_string"] == b"a=1" and s["headers"] == []
