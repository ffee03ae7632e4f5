"""ONE table of requests, sent in order to every target (uvicorn, the Lambda handler called directly, the handler
behind serverless-offline); their normalized answers must be equal, and each must have the status given here.

Paths are the application's (``/rest/services/...``): each target puts its own stage or base path in front.
``{task}`` in a path is the id the ``save="task"`` case got back. Bodies are JSON (``json=``) or, for the size
limit, a JSON string of ``pad`` bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NO_BODY: Any = object()
MAX_BODY = 2000  # DPMSF_MAX_BODY on every target, so the 413 case needs only a small body
MAP = {f"parm_{i}": f"p{i}" for i in range(1, 11)}
README_QUERY = (("a", "1"), ("b", "2"), ("c", "3"), ("d", "4"))


@dataclass(frozen=True)
class Case:
    """One request and the status it must get."""

    id: str
    method: str
    path: str
    status: int
    query: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    json: Any = NO_BODY
    pad: int = 0  # > 0: the body is a JSON string this long (over MAX_BODY: 413)
    save: str | None = None  # remember results.id under this name for later paths


CASES: tuple[Case, ...] = (
    # -- the original framework's README examples (tests/test_readme_examples.py, /work/shared/seeds) ---------
    Case("links", "GET", "/", 200),
    Case("readme-query", "GET", "/rest/services/hello-world/", 200, query=README_QUERY),
    Case("readme-slug", "GET", "/rest/services/hello-world/slug-or-numbers/", 200),
    Case("readme-no-trailing-slash", "GET", "/rest/services/hello-world", 200, query=(("name", "x"),)),
    Case(
        "readme-map",
        "POST",
        "/rest/services/v1/sample-one/1/2/3/4/5/6/7/8/9/10/",
        200,
        query=README_QUERY,
        json={
            "args": [1, 2, 3, 4, 5, 6],
            "name1": "one",
            "name2": "two",
            "name3": "three",
            "name4": "four",
            "__map__": MAP,
        },
    ),  # fmt: skip
    Case(
        "readme-unqualified",
        "POST",
        "/rest/services/sample-one/",
        200,
        json={"args": [1, 2, 3, 4, 5, 6], "name1": "one", "name2": "two", "name3": "three", "name4": "four"},
    ),
    *(
        Case(
            f"readme-versioning-{module}",
            "GET",
            f"/rest/services/{module}/api-name/update/123456789/",
            200,
            query=README_QUERY,
        )
        for module in ("v1", "v2", "product_v1", "product_v2")
    ),  # fmt: skip
    Case("directory", "GET", "/rest/services/__dir__/", 200),
    # -- query strings, typed parameters, framework responses -------------------------------------------------
    Case(
        "repeated-query-keys",
        "GET",
        "/rest/services/hello-world/",
        200,
        query=(("tag", "a"), ("tag", "b,c"), ("tag", "d"), ("one", "1")),
    ),  # fmt: skip
    Case("typed-params", "GET", "/rest/services/add/", 200, query=(("a", "40"), ("b", "2"))),
    Case("unicode-query", "GET", "/rest/services/upper/", 200, query=(("text", "héllo wörld"),)),
    Case("passthrough-response", "GET", "/rest/services/text/", 202),
    Case("binary-response", "GET", "/rest/services/png/", 200),
    Case("cookies", "GET", "/rest/services/cookie-jar/", 200, headers=(("Cookie", "b=2; a=1"),)),
    # -- the todo CRUD sequence -------------------------------------------------------------------------------
    Case("todo-empty-list", "GET", "/rest/services/todo/tasks/", 200),
    Case("todo-create", "POST", "/rest/services/todo/tasks/", 201, json={"title": "buy oat milk"}, save="task"),
    Case("todo-read", "GET", "/rest/services/todo/tasks/{task}/", 200),
    Case("todo-update", "PUT", "/rest/services/todo/tasks/{task}/", 200, json={"done": True}),
    Case("todo-list", "GET", "/rest/services/todo/tasks/", 200),
    Case("todo-invalid", "POST", "/rest/services/todo/tasks/", 422, json={"title": 5, "colour": "red"}),
    Case("todo-delete", "DELETE", "/rest/services/todo/tasks/{task}/", 204),
    Case("todo-read-deleted", "GET", "/rest/services/todo/tasks/{task}/", 404),
    # -- errors -------------------------------------------------------------------------------------------------
    Case("404-no-such-api", "GET", "/rest/services/no-such-api/", 404),
    Case("404-no-route", "GET", "/nowhere", 404),
    Case("404-raised", "GET", "/rest/services/item/7/", 404),
    Case("405-method", "DELETE", "/rest/services/hello-world/", 405),
    Case("409-ambiguous", "GET", "/rest/services/api-name/", 409),
    Case("413-body", "POST", "/rest/services/hello-world/", 413, pad=MAX_BODY * 2),
    Case("422-type", "GET", "/rest/services/add/", 422, query=(("a", "x"),)),
    Case("422-model", "POST", "/rest/services/order/", 422, json={"item": "tea", "quantity": "lots"}),
)
