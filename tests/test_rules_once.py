"""Rules kept in one place, and the two copies that must stay two agreeing: the guest program runs inside the
WebAssembly guest and may not import ours, so its JSON encoder and its frame vocabulary are checked against the
host's here."""

from __future__ import annotations

import ast
import dataclasses
import datetime
import decimal
import enum
import json
import uuid
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import pytest
from eventdata import lambda_context, load_event

from dpmsf_core import store
from dpmsf_core.aws.lambda_adapter import build_handler
from dpmsf_core.config import Settings
from dpmsf_core.errors import BadRequest, NotFound
from dpmsf_core.expose import allowed_methods, runs_for
from dpmsf_core.responses import dumps
from dpmsf_core.sandbox import guest_main
from dpmsf_core.sandbox.answers import ANSWER_KINDS
from dpmsf_core.sandbox.loader import serve_store
from dpmsf_core.switches import OFF_WORDS, ON_WORDS, switched_off, switched_on

GUEST_SOURCE = Path(guest_main.__file__).read_text(encoding="utf-8")

# -- GET answers HEAD, everything answers OPTIONS -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("declared", "allow"),
    [
        (("GET",), ["GET", "HEAD", "OPTIONS"]),
        (("POST",), ["POST", "OPTIONS"]),
        (("GET", "POST", "GET"), ["GET", "POST", "HEAD", "OPTIONS"]),
        (("HEAD", "GET", "OPTIONS"), ["HEAD", "GET", "OPTIONS"]),
    ],
)
def test_allow_lists_head_where_get_is_and_options_always(declared: tuple[str, ...], allow: list[str]) -> None:
    assert allowed_methods(declared) == allow
    assert runs_for(declared, "HEAD") == ("GET" in declared or "HEAD" in declared)
    assert not runs_for(("POST",), "GET") and not runs_for(("POST",), "OPTIONS")  # the preflight is not a call


def test_routes_and_dispatch_follow_the_one_rule(make_app: Callable[..., Any], plugin_dir: Any, serve: Any) -> None:
    plugin_dir.write(
        "m.py", "from dpmsf_core import expose\n\n@expose.endpoint(method='GET')\ndef f():\n    return 1\n"
    )
    client: httpx.Client = serve(make_app(plugin_dir.path))
    assert client.head("/rest/services/m/f/").status_code == 200
    refused = client.put("/rest/services/m/f/")
    assert refused.status_code == 405 and refused.headers["allow"] == ", ".join(allowed_methods(("GET",)))
    listing = client.delete("/rest/services/__dir__/")
    assert listing.status_code == 405 and listing.headers["allow"] == ", ".join(allowed_methods(("GET",)))


# -- on/off switches ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("word", sorted(ON_WORDS | OFF_WORDS | {" TRUE ", "Off", "maybe", "0.1"}))
def test_settings_and_the_lambda_formats_read_a_switch_alike(word: str) -> None:
    """``config`` (strict: DPMSF_DEBUG) and the Lambda log and metric formats (lenient) read the same words."""
    try:
        strict: bool | None = Settings.from_env({"DPMSF_DEBUG": word}, dotenv=None).debug
    except Exception:
        strict = None  # not a switch word: refused at start-up
    if strict is None:
        assert not switched_on(word) and not switched_off(word)
    else:
        assert strict == switched_on(word) == (not switched_off(word))


# -- problem+json: one rendering ------------------------------------------------------------------------------------


def test_the_asgi_and_lambda_paths_render_a_problem_alike(
    make_app: Callable[..., Any], plugin_dir: Any, serve: Any
) -> None:
    app = make_app(plugin_dir.path)
    answer = serve(app).get("/rest/services/no-such-module/")
    doc = answer.json()
    assert answer.status_code == 404 and answer.headers["content-type"] == "application/problem+json"
    assert answer.content == NotFound(doc["detail"]).problem_json(doc["request_id"], doc["instance"])

    event = load_event("apigw_v1", path="/rest/services/hello-world/", method="POST")
    event.update(isBase64Encoded=True, body="not base64!")
    context = lambda_context()
    out = build_handler(app)(event, context)
    doc = json.loads(out["body"])
    expected = BadRequest(doc["detail"], title="Bad Event").problem_json(context.aws_request_id)
    assert out["statusCode"] == 400 and out["body"].encode() == expected


# -- the guest's JSON encoder and the host's -------------------------------------------------------------------------


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    at: datetime.date
    tags: tuple[str, ...]


SAMPLES: dict[str, Any] = {
    "datetime": datetime.datetime(2026, 12, 7, 23, 59, 58, 123456, tzinfo=datetime.UTC),
    "naive datetime": datetime.datetime(2026, 1, 2, 3, 4, 5),
    "date": datetime.date(2026, 2, 28),
    "time": datetime.time(12, 30, 1),
    "timedelta": datetime.timedelta(days=1, seconds=1.5),
    "integral Decimal": decimal.Decimal("42.000"),
    "fractional Decimal": decimal.Decimal("12.75"),
    "UUID": uuid.UUID("7c9e6679-7425-40de-944b-e07fc1f90ae7"),
    "Enum": Colour.RED,
    "set": {3},
    "frozenset": frozenset({"a"}),
    "tuple": (1, "two", None),
    "bytes": b"\x00\xffbinary",
    "dataclass": Point(1, datetime.date(2026, 3, 1), ("a", "b")),
    "nested": {"when": [datetime.date(2026, 4, 1), {decimal.Decimal("1.5")}], "id": uuid.UUID(int=1)},
    "text": "caf\u00e9 \u2603 \U0001f600",
    "PurePath": PurePosixPath("/srv/data.txt"),
    "complex": 1 + 2j,
}
HOST_ONLY = {"PurePath"}  # pathlib is not in the guest's import allow-list: tenant code cannot make one
NEITHER = {"complex"}


def _guest_json(value: Any) -> str | None:
    try:
        return str(guest_main.Guest(1 << 20).encoder.encode(value))
    except TypeError:
        return None


def _host_json(value: Any) -> str | None:
    try:
        return dumps(value).decode("utf-8")
    except TypeError:
        return None


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_the_guest_and_the_host_encode_every_shared_type_alike(name: str) -> None:
    guest, host = _guest_json(SAMPLES[name]), _host_json(SAMPLES[name])
    if name in NEITHER:
        assert guest is None and host is None
    elif name in HOST_ONLY:
        assert guest is None and host is not None
        assert all(m.partition(".")[0] not in guest_main.ALLOWED_IMPORTS for m in ("pathlib", "pydantic"))
    else:
        assert guest is not None and host is not None, (guest, host)
        assert json.loads(guest) == json.loads(host)  # what the host reads from the guest is what it would write
        if guest.isascii() and host.isascii():
            assert guest == host  # and, in ASCII, to the letter


def _type_names(node: ast.expr) -> list[str]:
    """``datetime.datetime | datetime.date`` or ``(set, frozenset)`` -> ``["datetime", "date"]``."""
    if isinstance(node, ast.BinOp):
        return _type_names(node.left) + _type_names(node.right)
    if isinstance(node, ast.Tuple):
        return [name for element in node.elts for name in _type_names(element)]
    return [ast.unparse(node).rpartition(".")[2]]


def test_every_type_the_guests_encoder_names_is_sampled() -> None:
    """A type added to one encoder and not the other fails above only if it is sampled: each ``isinstance`` the
    guest's ``_encode_default`` checks names a type of the samples."""
    tree = ast.parse(GUEST_SOURCE)
    default = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_encode_default")
    named = {
        name
        for call in ast.walk(default)
        if isinstance(call, ast.Call) and ast.unparse(call.func) == "isinstance"
        for name in _type_names(call.args[1])
    } - {"type"}  # ``not isinstance(value, type)``: a dataclass instance, not the class
    sampled = {cls.__name__ for value in SAMPLES.values() for cls in type(value).__mro__}
    assert named and named - sampled == set(), named - sampled
    assert "is_dataclass" in ast.unparse(default) and "dataclass" in SAMPLES


# -- the guest's frames and the host's vocabulary -------------------------------------------------------------------


def _emitted(key: str) -> set[str]:
    """Every constant the guest program puts under ``key`` in a dict literal it sends."""
    found = set()
    for node in ast.walk(ast.parse(GUEST_SOURCE)):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values, strict=True):
                if isinstance(k, ast.Constant) and k.value == key and isinstance(v, ast.Constant):
                    found.add(str(v.value))
    return found


def test_every_kind_of_answer_the_guest_sends_is_one_the_host_maps() -> None:
    kinds = _emitted("kind")
    assert kinds and kinds <= ANSWER_KINDS, kinds - ANSWER_KINDS
    assert ANSWER_KINDS - kinds == set()  # and the host maps none the guest no longer sends


def test_every_frame_op_the_guest_sends_is_one_the_host_reads() -> None:
    ops = _emitted("op") | ({"answer"} if '{"op":"answer"' in GUEST_SOURCE else set())
    # process.py waits for "ready"; the pool serves "store"; answers.outcome reads "answer"
    assert ops == {"ready", "store", "answer"}


def test_every_store_method_the_guest_asks_for_is_served(tmp_path: Path) -> None:
    tree = ast.parse(GUEST_SOURCE)
    methods = {
        call.args[0].value
        for call in ast.walk(tree)
        if isinstance(call, ast.Call)
        and ast.unparse(call.func) == "self._ask"
        and isinstance(call.args[0], ast.Constant)
    }
    assert methods == {"get", "put", "create", "update", "delete", "list"}
    arguments: dict[str, list[Any]] = {
        "get": ["k"],
        "put": ["k", {"v": 1}],
        "create": [{"v": 2}, "k2"],
        "update": ["k", {"v": 3}],
        "list": [10, None],
        "delete": ["k"],
    }
    backend = store.SQLiteStore(tmp_path / "store.db")
    try:
        with store.using(backend):
            served = {m: serve_store("_", m, "c", arguments[m]) for m in ["put", "get", "create", "update", "list"]}
            served["delete"] = serve_store("_", "delete", "c", arguments["delete"])
    finally:
        backend.close()
    assert served["get"] == {"id": "k", "v": 1} and served["update"] == {"id": "k", "v": 3}
    assert served["delete"] is True and [d["id"] for d in served["list"][0]] == ["k", "k2"]
