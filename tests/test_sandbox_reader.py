"""Tenant modules are read with ``ast`` only, and the result mirrors what importing them would declare."""

from __future__ import annotations

import inspect
import sys
import textwrap
from pathlib import Path

import pytest

from dpmsf_core.errors import PluginError
from dpmsf_core.expose import EndpointSpec, EventSpec, endpoint_spec
from dpmsf_core.sandbox.reader import ParamInfo, UntrustedModule, inspect_file, inspect_source

PLUGIN = Path(__file__).parent / "plugins" / "tenant_sandbox" / "escapes.py"


def read(source: str, filename: str = "tenant_mod.py") -> UntrustedModule:
    return inspect_source(textwrap.dedent(source), filename)


def specs(source: str) -> dict[str, EndpointSpec]:
    return {ep.function: ep.spec for ep in read(source).endpoints}


@pytest.mark.parametrize(
    ("decorator", "methods"),
    [
        ('@expose.endpoint(method="GET|PUT|post", API="hello-world")', ("GET", "PUT", "POST")),
        ('@expose.endpoint(method=["GET", "DELETE"], API="hello-world")', ("GET", "DELETE")),
        ('@expose.endpoint(method=("PATCH",), API="hello-world")', ("PATCH",)),
        ('@expose.endpoint(method="GET|PUT".split("|"), API="hello-world")', ("GET", "PUT")),
        ('@expose.endpoint(method="GET PUT".split(), API="hello-world")', ("GET", "PUT")),
        ('@expose.endpoint(method="get", API="hello-world")', ("GET",)),
        ('@expose.endpoint(API="hello-world")', ("GET", "POST")),
    ],
    ids=["string", "list", "tuple", "split", "split-default", "lowercase", "default"],
)
def test_method_forms(decorator: str, methods: tuple[str, ...]) -> None:
    source = f'''
    from dpmsf_core import expose

    {decorator}
    def foo(*args, **kwargs):
        """Say hello.

        More text.
        """
        return {{"hello": kwargs.get("name", "world")}}
    '''
    assert specs(source) == {"foo": EndpointSpec(api="hello-world", methods=methods, summary="Say hello.")}


def test_bare_decorator_and_auth() -> None:
    source = """
    import dpmsf_core
    from dpmsf_core import expose
    from dpmsf_core.expose import expose as ex

    @expose.endpoint
    def plain(): ...

    @dpmsf_core.expose.endpoint(auth=True)
    def qualified(): ...

    @ex.endpoint(method="DELETE", auth=False)
    def aliased(): ...

    def helper(): ...
    """
    assert specs(source) == {
        "plain": EndpointSpec(api="plain", methods=("GET", "POST")),
        "qualified": EndpointSpec(api="qualified", methods=("GET", "POST"), auth=True),
        "aliased": EndpointSpec(api="aliased", methods=("DELETE",), auth=False),
    }


def test_matches_what_import_would_declare() -> None:
    """The same source, imported for real (it is harmless) and read with ast, gives the same specs."""
    source = """
    from dpmsf_core import expose

    @expose.endpoint(method="GET|PUT".split("|"), API="v-one")
    def one(a: int, b: str = "x"):
        '''First line.'''

    @expose.endpoint
    async def two(): ...
    """
    namespace: dict[str, object] = {}
    exec(textwrap.dedent(source), namespace)
    imported = {name: endpoint_spec(namespace[name]) for name in ("one", "two")}
    assert specs(source) == imported


def test_introspection_mode_exposes_public_functions_only() -> None:
    module = read(
        """
        from json import dumps
        import math

        def area(r: float) -> float:
            '''Area of a circle.'''
            return math.pi * r * r

        async def later(): ...

        def _private(): ...

        class Shape:
            def method(self): ...

        square = lambda x: x * x
        """
    )
    assert module.introspection is True
    assert [(ep.function, ep.spec.methods, ep.is_async) for ep in module.endpoints] == [
        ("area", ("GET", "POST"), False),
        ("later", ("GET", "POST"), True),
    ]
    assert module.endpoints[0].spec.summary == "Area of a circle."


def test_one_decorator_turns_introspection_off() -> None:
    module = read(
        """
        from dpmsf_core import expose

        @expose.event(source="sqs", match="orders")
        def on_order(record): ...

        def not_exposed(): ...
        """
    )
    assert module.introspection is False
    assert module.endpoints == ()
    assert [(ev.function, ev.spec) for ev in module.events] == [
        ("on_order", EventSpec(source="sqs", match="orders", name="on_order"))
    ]


def test_private_function_with_decorator_is_exposed_like_import_would() -> None:
    assert specs("from dpmsf_core import expose\n@expose.endpoint(API='hidden')\ndef _impl(): ...\n") == {
        "_impl": EndpointSpec(api="hidden", methods=("GET", "POST"))
    }


def test_tenant_alias_and_doc_are_read() -> None:
    module = inspect_file(str(PLUGIN))
    assert module.tenant == "7b0c3f52-2f4e-4a8e-9a3c-5d1e2f3a4b5c"
    assert module.alias == "sandboxed"
    assert module.doc and module.doc.startswith("A tenant module")
    assert module.filename == str(PLUGIN)
    assert len(module.sha256) == 64
    assert module.source == PLUGIN.read_text(encoding="utf-8")
    assert "escapes" not in sys.modules  # read, never imported


def test_module_without_metadata() -> None:
    module = read("def f(): ...\n")
    assert (module.tenant, module.alias) == (None, None)


def test_computed_tenant_is_refused() -> None:
    with pytest.raises(PluginError, match=r"tenant_mod.py, line 2: __tenant__ must be a string literal"):
        read("ADMIN = 'x'\n__tenant__ = ADMIN\n")


def test_parameters_and_signature() -> None:
    (ep,) = read(
        """
        def f(a, /, b: int, c: list[str] = [], *rest, d: 'int | None' = None, e=len, **extra) -> dict:
            '''Doc.'''
        """
    ).endpoints
    P = inspect.Parameter
    assert [(p.name, p.kind, p.annotation) for p in ep.params] == [
        ("a", P.POSITIONAL_ONLY, None),
        ("b", P.POSITIONAL_OR_KEYWORD, "int"),
        ("c", P.POSITIONAL_OR_KEYWORD, "list[str]"),
        ("rest", P.VAR_POSITIONAL, None),
        ("d", P.KEYWORD_ONLY, "'int | None'"),
        ("e", P.KEYWORD_ONLY, None),
        ("extra", P.VAR_KEYWORD, None),
    ]
    assert ep.params[2] == ParamInfo("c", P.POSITIONAL_OR_KEYWORD, [], "list[str]")
    assert [p.required for p in ep.params] == [True, True, False, False, False, False, False]
    assert repr(ep.params[5].default) == "len"  # not a literal: known to be optional, never evaluated
    sig = ep.signature()
    assert sig.parameters["b"].annotation is int
    assert sig.parameters["c"].annotation == list[str]
    assert sig.parameters["d"].annotation == int | None
    assert sig.bind(1, 2).arguments == {"a": 1, "b": 2}


def test_unknown_annotation_stays_text() -> None:
    (ep,) = read("def f(item: Item, n: 'Tricky[int]' = 1): ...\n").endpoints
    assert ep.signature().parameters["item"].annotation == "Item"


@pytest.mark.parametrize(
    ("decorator", "reason"),
    [
        ('@expose.endpoint(method="GET|FETCH")', "names 'FETCH', not an HTTP method"),
        ("@expose.endpoint(method=METHODS)", "method=METHODS must be a literal"),
        ('@expose.endpoint(API="bad name")', "API='bad name' is not a valid API name"),
        ('@expose.endpoint(API="__dir__")', "is not a valid API name"),
        ('@expose.endpoint(auth="yes")', "auth='yes' must be True, False or omitted"),
        ('@expose.endpoint(verb="GET")', "unexpected keyword 'verb'"),
        ('@expose.endpoint("GET")', "keyword arguments only"),
        ("@expose.endpoint(**options)", "cannot be read without running the code"),
        ('@expose.event(source="kafka")', "source='kafka' is not an event source"),
    ],
)
def test_invalid_declarations_name_the_function(decorator: str, reason: str) -> None:
    source = f"from dpmsf_core import expose\n\n\n{decorator}\ndef handler(): ...\n"
    with pytest.raises(PluginError) as info:
        read(source)
    assert "tenant_mod.py, line 5: function 'handler': " in str(info.value)
    assert reason in str(info.value)


def test_command_is_not_available_to_tenants() -> None:
    with pytest.raises(PluginError, match="line 2: expose.command is not available"):
        read('from dpmsf_core import expose\nhello = expose.command(API="hello", argv=["node", "hello.js"])\n')


def test_syntax_error_names_file_and_line() -> None:
    with pytest.raises(PluginError, match=r"^tenant_mod.py, line 3: syntax error: "):
        read("def ok():\n    pass\ndef broken(:\n")


def test_unreadable_file_is_a_plugin_error(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match="cannot read the module"):
        inspect_file(str(tmp_path / "missing.py"))


def test_path_templates_read_as_an_import_would_declare_them() -> None:
    source = """
    from dpmsf_core import expose

    @expose.endpoint(path="notes/{note_id}", method="GET|PUT")
    def note(note_id: int, body: str = ""):
        '''One note.'''

    @expose.endpoint(path="notes/{year}/{slug}")
    def archived(**kw): ...
    """
    namespace: dict[str, object] = {}
    exec(textwrap.dedent(source), namespace)
    imported = {name: endpoint_spec(namespace[name]) for name in ("note", "archived")}
    assert specs(source) == imported
    assert specs(source)["note"].template == ("{note_id}",) and specs(source)["note"].api == "notes"


@pytest.mark.parametrize(
    ("decorator", "message"),
    [
        ('@expose.endpoint(path="notes/{other}")', "names {other}, which f() does not take as a parameter"),
        ('@expose.endpoint(path="notes/{note_id}", API="tasks")', "starts with 'notes' but API='tasks'"),
        ('@expose.endpoint(path="{note_id}")', "must start with the API name"),
    ],
)
def test_a_bad_path_template_is_refused_with_the_reason(decorator: str, message: str) -> None:
    with pytest.raises(PluginError, match=message.replace("{", r"\{").replace("(", r"\(").replace(")", r"\)")):
        read(f"from dpmsf_core import expose\n\n{decorator}\ndef f(note_id: int):\n    pass\n")
