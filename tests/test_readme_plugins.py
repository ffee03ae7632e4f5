"""The README's first plugin, copied as a reader copies it, answers exactly the URLs OpenAPI documents.

The rule (docs/guides/plugins.md): beside path templates, a function of the same API without ``path=`` answers
only the API's bare URL; a URL of another shape is a 404 listing the shapes, a known shape with another method
a 405 with ``Allow``. ``/docs`` shows each endpoint at the URL its author declared.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from conftest import PluginDir
from docsnippets import plugin_file


def test_the_readme_welcome_plugin_answers_what_openapi_documents(
    plugin_dir: PluginDir, make_app: Callable[..., Any], serve: Callable[[Any], httpx.Client]
) -> None:
    plugin_dir.write("welcome.py", plugin_file("welcome.py"))
    client = serve(make_app(plugin_dir.path))
    paths = client.get("/openapi.json").json()["paths"]
    assert {path: sorted(ops) for path, ops in paths.items()} == {
        "/rest/services/welcome/": ["get", "post", "put"],
        "/rest/services/welcome/{lang}/": ["get"],
    }
    assert client.get("/rest/services/welcome/fr/?name=Ada").json() == {"results": {"welcome": "Ada", "lang": "fr"}}
    for method in ("GET", "PUT", "POST"):
        r = client.request(method, "/rest/services/welcome/?name=Ada")
        assert r.json() == {"results": {"welcome": "Ada"}}, (method, r.text)
        assert client.request(method, "/rest/services/welcome_v1/welcome/").status_code == 200  # qualified by alias
    put = client.put("/rest/services/welcome/fr/")
    assert put.status_code == 405 and put.headers["allow"] == "GET, HEAD, OPTIONS", put.text
    assert put.headers["content-type"] == "application/problem+json"
    for url in ("/rest/services/welcome/fr/extra/", "/rest/services/welcome_v1/welcome/fr/extra/"):
        deeper = client.get(url)
        assert deeper.status_code == 404 and deeper.headers["content-type"] == "application/problem+json"
        assert "/rest/services/welcome_v1/welcome/{lang}/" in deeper.json()["detail"]
    assert client.post("/rest/services/welcome/fr/", json={}).status_code == 405


def test_docs_show_the_urls_authors_declared(
    plugin_dir: PluginDir, make_app: Callable[..., Any], serve: Callable[[Any], httpx.Client]
) -> None:
    plugin_dir.write(
        "notes.py",
        """
        from dpmsf_core import expose

        @expose.endpoint(method="GET", path="notes")
        def list_notes() -> list[str]:
            return ["a"]

        @expose.endpoint(method="GET", path="notes/{note_id}")
        def get_note(note_id: int) -> int:
            return note_id
        """,
    )
    for name in ("first", "second"):  # one API in two modules: only the qualified URLs answer, and are documented
        plugin_dir.write(
            f"{name}.py",
            f"from dpmsf_core import expose\n\n@expose.endpoint(API='shared')\ndef f():\n    return '{name}'\n",
        )
    client = serve(make_app(plugin_dir.path))
    paths = client.get("/openapi.json").json()["paths"]
    assert sorted(paths) == [
        "/rest/services/first/shared/",
        "/rest/services/notes/",
        "/rest/services/notes/{note_id}/",
        "/rest/services/second/shared/",
    ]
    assert client.get("/rest/services/notes/").json() == {"results": ["a"]}
    assert client.get("/rest/services/notes/7/").json() == {"results": 7}
    assert client.get("/rest/services/shared/").status_code == 409
    note = paths["/rest/services/notes/{note_id}/"]["get"]
    assert "`GET /rest/services/notes/notes/{note_id}/`" in note["description"]  # the qualified URL, as a note
    docs = client.get("/docs")
    assert docs.status_code == 200 and "openapi.json" in docs.text
