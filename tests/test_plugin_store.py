"""Upload checks, tenant stamping, and both plugin store backends (a folder, S3 on a real moto server)."""

from __future__ import annotations

import ast
import uuid
from pathlib import Path
from typing import Any

import pytest
from motoserver import client as moto_client

from dpmsf_core.errors import BadRequest, PayloadTooLarge, UnprocessableArguments
from dpmsf_core.upload.s3_store import S3PluginStore
from dpmsf_core.upload.stores import (
    FolderPluginStore,
    PluginStore,
    stamp_tenant,
    validate_upload,
)

TENANT = "7c9e6679-7425-40de-944b-e07fc1f90ae7"

# -- validate_upload ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["../x", "a/b", "a\\b", "x.y", "1abc", "class", "None", "_private", "__init__", "", "a-b", "a b", "é", "x\x00"],
)
def test_bad_names_are_400(name: str) -> None:
    with pytest.raises(BadRequest, match="Module name"):
        validate_upload(name, "X = 1\n")


def test_overlong_name_is_400() -> None:
    with pytest.raises(BadRequest, match="too long"):
        validate_upload("a" * 101, "")


@pytest.mark.parametrize("name", ["hello", "hello_world", "v1", "A", "match"])
def test_good_names(name: str) -> None:
    assert validate_upload(name, b"X = 1\n") == "X = 1\n"


def test_oversize_body_is_413() -> None:
    source = "X = 1\n" * 10
    assert validate_upload("m", source, max_bytes=len(source)) == source
    with pytest.raises(PayloadTooLarge, match="61 bytes. Expected at most 60 bytes"):
        validate_upload("m", source + "\n", max_bytes=60)


def test_size_counts_utf8_bytes_not_characters() -> None:
    with pytest.raises(PayloadTooLarge):
        validate_upload("m", 'S = "ééé"', max_bytes=10)


def test_non_utf8_body_is_400() -> None:
    with pytest.raises(BadRequest, match="not valid UTF-8"):
        validate_upload("m", b"S = '\xff'\n")


def test_utf8_bom_is_accepted_and_dropped() -> None:
    assert validate_upload("m", "\ufeffX = 'é'\n".encode()) == "X = 'é'\n"


def test_foreign_coding_cookie_is_422() -> None:
    with pytest.raises(UnprocessableArguments, match="latin-1"):
        validate_upload("m", b"# -*- coding: latin-1 -*-\nX = 1\n")
    assert validate_upload("m", b"# -*- coding: utf-8 -*-\nX = 1\n").startswith("# -*- coding")


def test_syntax_error_is_422_with_line() -> None:
    with pytest.raises(UnprocessableArguments) as info:
        validate_upload("m", "X = 1\ndef broken(:\n    pass\n")
    assert "line 2" in info.value.detail
    assert info.value.status == 422
    assert info.value.errors == [{"loc": ["body", 2, 12], "msg": "invalid syntax"}]  # the one 422 shape: line, column


def test_nul_byte_is_422() -> None:
    with pytest.raises(UnprocessableArguments):
        validate_upload("m", b"X = 1\x00\n")


def test_name_is_checked_before_body() -> None:
    with pytest.raises(BadRequest, match="Module name"):
        validate_upload("../etc/passwd", b"\xff" * 1_000_000, max_bytes=10)


# -- stamp_tenant ------------------------------------------------------------------------------------------

STAMP = f'__tenant__ = "{TENANT}"'


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param("X = 1\n", f"{STAMP}\nX = 1\n", id="no-claim"),
        pytest.param("", f"{STAMP}\n", id="empty"),
        pytest.param("# just a comment", f"# just a comment\n{STAMP}\n", id="comment-only"),
        pytest.param('__tenant__ = "admin"\nX = 1\n', f"{STAMP}\nX = 1\n", id="plain"),
        pytest.param('__tenant__ = "x"; other = 1\n', f"{STAMP}; other = 1\n", id="one-line-semicolon"),
        pytest.param('a = 0; __tenant__ = "x"; b = 1\n', f"a = 0; {STAMP}; b = 1\n", id="middle-of-line"),
        pytest.param('__tenant__: str = "x"\n', f"{STAMP}\n", id="annotated"),
        pytest.param("__tenant__: str\n", f"{STAMP}\n", id="annotation-only"),
        pytest.param('__tenant__ += "x"\n', f"{STAMP}\n", id="augmented"),
        pytest.param('__tenant__ = (\n    "x"\n)\nY = 2\n', f"{STAMP}\nY = 2\n", id="multi-line-value"),
        pytest.param(
            '__tenant__, y = "x", 2\n',
            f'{STAMP}\n_claimed_tenant, y = "x", 2\n',
            id="tuple",
        ),
        pytest.param(
            '__tenant__ = other = "x"\n',
            f'{STAMP}\n_claimed_tenant = other = "x"\n',
            id="chained-with-other-name",
        ),
        pytest.param(
            '__tenant__ = "a"\nX = 1\n__tenant__ = "b"\n',
            f"{STAMP}\nX = 1\n{STAMP}\n",
            id="multiple",
        ),
        pytest.param(
            '"""Docstring."""\nX = 1\n',
            f'"""Docstring."""\n{STAMP}\nX = 1\n',
            id="docstring-first",
        ),
        pytest.param(
            '"""Doc\n\nstring."""\n\nX = 1\n',
            f'"""Doc\n\nstring."""\n{STAMP}\n\nX = 1\n',
            id="multi-line-docstring",
        ),
        pytest.param(
            "from __future__ import annotations\n\nimport os\n",
            f"from __future__ import annotations\n{STAMP}\n\nimport os\n",
            id="future-first",
        ),
        pytest.param(
            '"""Doc."""\nfrom __future__ import annotations\nfrom __future__ import division\nX = 1\n',
            f'"""Doc."""\nfrom __future__ import annotations\nfrom __future__ import division\n{STAMP}\nX = 1\n',
            id="docstring-and-futures",
        ),
        pytest.param(
            "#!/usr/bin/env python\n# -*- coding: utf-8 -*-\n@staticmethod\ndef f(): pass\n",
            f"#!/usr/bin/env python\n# -*- coding: utf-8 -*-\n{STAMP}\n@staticmethod\ndef f(): pass\n",
            id="comments-and-decorator",
        ),
        pytest.param(
            'if True:\n    __tenant__ = "evil"\n',
            f'{STAMP}\nif True:\n    _claimed_tenant = "evil"\n',
            id="nested-in-if",
        ),
        pytest.param(
            'for __tenant__ in ["evil"]:\n    pass\n',
            f'{STAMP}\nfor _claimed_tenant in ["evil"]:\n    pass\n',
            id="for-target",
        ),
        pytest.param(
            'def f():\n    global __tenant__\n    __tenant__ = "evil"\n',
            f'{STAMP}\ndef f():\n    global __tenant__\n    _claimed_tenant = "evil"\n',
            id="global-in-function",
        ),
        pytest.param(
            '__tenant__ = (y := "x")\n',
            f'{STAMP}\n_claimed_tenant = (y := "x")\n',
            id="walrus-in-value-keeps-y",
        ),
        pytest.param(
            'X = [(__tenant__ := v) for v in "ab"]\n',
            f'{STAMP}\nX = [(_claimed_tenant := v) for v in "ab"]\n',
            id="walrus-in-comprehension",
        ),
        pytest.param(
            's = "é"; __tenant__ = "ü"; t = "ß"\n',
            f's = "é"; {STAMP}; t = "ß"\n',
            id="non-ascii-columns",
        ),
        pytest.param("X = 1\r\n__tenant__ = 'x'\r\n", f"X = 1\r\n{STAMP}\r\n", id="crlf"),
        pytest.param("\ufeffX = 1\n", f"{STAMP}\nX = 1\n", id="bom"),
        # only statements whose lines may spell the name are walked: every other spelling must still be seen
        pytest.param('__\uff54enant__ = "evil"\n', f"{STAMP}\n", id="nfkc-fullwidth-letter"),
        pytest.param(
            'x = "a\x0cb\x1cc"\n__tenant__ = "evil"\n', f'x = "a\x0cb\x1cc"\n{STAMP}\n', id="splitlines-chars"
        ),
        pytest.param("X = 1\r__tenant__ = 'x'\r", f"X = 1\r{STAMP}\r", id="cr-only"),
        pytest.param(
            "X = [\n    (__tenant__ := 1)\n]\n", f"{STAMP}\nX = [\n    (_claimed_tenant := 1)\n]\n", id="later-line"
        ),
    ],
)
def test_stamp_tenant(source: str, expected: str) -> None:
    stamped = stamp_tenant(source, TENANT)

    assert stamped == expected
    namespace: dict[str, Any] = {}
    exec(compile(stamped, "m.py", "exec"), namespace)
    assert namespace["__tenant__"] == TENANT


def test_stamp_keeps_the_other_bindings() -> None:
    stamped = stamp_tenant('__tenant__, y = "x", 2\n__tenant__ = "z"; w = 3\n', TENANT)
    namespace: dict[str, Any] = {}
    exec(stamped, namespace)
    assert (namespace["__tenant__"], namespace["y"], namespace["w"]) == (TENANT, 2, 3)


def test_stamp_is_idempotent() -> None:
    once = stamp_tenant('"""Doc."""\nX = 1\n', TENANT)
    assert stamp_tenant(once, TENANT) == once
    assert stamp_tenant(once, "other") == once.replace(TENANT, "other")


def test_ast_reader_sees_only_the_stamp() -> None:
    source = 'class C:\n    __tenant__ = "evil"\nif 1:\n    __tenant__ = "evil"\n__tenant__ = "evil"\n'
    tree = ast.parse(stamp_tenant(source, TENANT))
    values = {
        node.value.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "__tenant__" for t in ast.walk(node))
        and isinstance(node.value, ast.Constant)
    }
    assert values == {TENANT}


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("del __tenant__\n", id="del"),
        pytest.param("def __tenant__(): pass\n", id="def"),
        pytest.param("class __tenant__: pass\n", id="class"),
        pytest.param("from evil import admin as __tenant__\n", id="import-as"),
        pytest.param("from evil import __tenant__\n", id="from-import"),
        pytest.param("try:\n    pass\nexcept Exception as __tenant__:\n    pass\n", id="except-as"),
        pytest.param("match 1:\n    case __tenant__:\n        pass\n", id="match-capture"),
    ],
)
def test_unstampable_bindings_are_422(source: str) -> None:
    with pytest.raises(UnprocessableArguments, match="__tenant__"):
        stamp_tenant(source, TENANT)


@pytest.mark.parametrize("tenant_id", ["", 'x"; import os; "', "a\nb", "x" * 200])
def test_bad_tenant_id_is_refused(tenant_id: str) -> None:
    with pytest.raises(ValueError, match="Tenant id"):
        stamp_tenant("X = 1\n", tenant_id)


def test_stamp_refuses_unparsable_source() -> None:
    with pytest.raises(UnprocessableArguments, match="line 1"):
        stamp_tenant("def (:\n", TENANT)


# -- backends ----------------------------------------------------------------------------------------------


@pytest.fixture
def endpoint(moto_url: str) -> str:
    return moto_url  # the run's one moto server (conftest.py)


def _folder_store(tmp_path: Path, request: pytest.FixtureRequest) -> FolderPluginStore:
    return FolderPluginStore(tmp_path / "uploads")


def _s3_store(tmp_path: Path, request: pytest.FixtureRequest) -> S3PluginStore:
    s3 = moto_client("s3", request.getfixturevalue("endpoint"))
    bucket = f"uploads-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    return S3PluginStore(f"s3://{bucket}/plugins", client=s3)


@pytest.fixture(params=[_folder_store, pytest.param(_s3_store, marks=pytest.mark.slow)], ids=["folder", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> PluginStore:
    return request.param(tmp_path, request)


def test_store_put_get_list_delete(store: PluginStore) -> None:
    assert isinstance(store, PluginStore)
    assert store.list() == []
    assert store.get("hello") is None
    assert store.delete("hello") is False

    store.put("hello", "X = 'é'\n")
    store.put("alpha", "A = 1\r\n")
    assert store.get("hello") == "X = 'é'\n"
    assert store.get("alpha") == "A = 1\r\n"  # stored byte for byte
    assert store.list() == ["alpha", "hello"]

    store.put("hello", "X = 2\n")
    assert store.get("hello") == "X = 2\n"

    assert store.delete("hello") is True
    assert store.delete("hello") is False
    assert store.get("hello") is None
    assert store.list() == ["alpha"]


@pytest.mark.parametrize("name", ["../x", "a/b", "_x", "x.y"])
def test_store_refuses_bad_names(store: PluginStore, name: str) -> None:
    with pytest.raises(BadRequest):
        store.put(name, "X = 1\n")
    with pytest.raises(BadRequest):
        store.get(name)
    with pytest.raises(BadRequest):
        store.delete(name)


def test_folder_store_writes_atomically_and_lists_only_uploads(tmp_path: Path) -> None:
    store = FolderPluginStore(tmp_path)
    (tmp_path / "_private.py").write_text("")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "notes.txt").write_text("")
    store.put("m", "X = 1\n")

    assert store.list() == ["m"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".upload.lock", "_private.py", "m.py", "notes.txt", "pkg"]


def test_folder_store_creates_its_folder(tmp_path: Path) -> None:
    store = FolderPluginStore(tmp_path / "a" / "b")
    assert store.list() == []
    store.put("m", "")
    assert (tmp_path / "a" / "b" / "m.py").read_text() == ""


@pytest.mark.slow
def test_s3_store_keys_and_listing(endpoint: str) -> None:
    s3 = moto_client("s3", endpoint)
    name = f"store-keys-{uuid.uuid4().hex[:8]}"  # the moto server is shared by the whole run
    s3.create_bucket(Bucket=name)
    store = S3PluginStore(f"s3://{name}/plugins/", client=s3)
    store.put("m", "X = 1\n")
    s3.put_object(Bucket=name, Key="plugins/pkg/__init__.py", Body=b"")
    s3.put_object(Bucket=name, Key="plugins/readme.txt", Body=b"")
    s3.put_object(Bucket=name, Key="other/n.py", Body=b"")

    head = s3.head_object(Bucket=name, Key="plugins/m.py")
    assert head["ContentType"].startswith("text/x-python")
    assert store.list() == ["m"]


@pytest.mark.slow
def test_s3_store_missing_bucket_raises(endpoint: str) -> None:
    from botocore.exceptions import ClientError

    store = S3PluginStore("s3://no-such-bucket-store/p", client=moto_client("s3", endpoint))
    with pytest.raises(ClientError):
        store.get("m")
