"""URL resolution over a real registry snapshot: qualified, unqualified, ambiguity, tenants, too many params."""

from __future__ import annotations

from typing import Any

import pytest

from dpmsf_core.errors import Conflict, NotFound
from dpmsf_core.loading.registry import Registry
from dpmsf_core.resolve import resolve, visible_to

TENANT_A = "11111111-1111-4111-8111-111111111111"


@pytest.fixture
def snapshot(plugin_dir: Any):
    plugin_dir.write("alpha.py", "def shared(): ...\ndef only_alpha(): ...\n")
    plugin_dir.write("beta.py", "__alias__ = 'b1'\ndef shared(): ...\ndef alpha(): ...\n")
    reg = Registry([str(plugin_dir.path)])
    reg.load()
    return reg.snapshot


def test_unqualified_unique(snapshot) -> None:
    ep, params = resolve(snapshot, ["only_alpha", "x", "y"], max_url_params=10)
    assert (ep.module, ep.api, params) == ("alpha", "only_alpha", ["x", "y"])


def test_qualified_by_module_and_alias(snapshot) -> None:
    assert resolve(snapshot, ["alpha", "shared"], max_url_params=10)[0].module == "alpha"
    assert resolve(snapshot, ["b1", "shared", "p"], max_url_params=10)[1] == ["p"]


def test_module_name_that_is_also_an_api_falls_back(snapshot) -> None:
    ep, params = resolve(snapshot, ["alpha", "not-an-api"], max_url_params=10)
    assert (ep.module, ep.api, params) == ("b1", "alpha", ["not-an-api"])


def test_ambiguous(snapshot) -> None:
    with pytest.raises(Conflict) as info:
        resolve(snapshot, ["shared"], max_url_params=10)
    assert info.value.candidates == ["/rest/services/alpha/shared/", "/rest/services/b1/shared/"]


def test_unknown_and_too_many(snapshot) -> None:
    with pytest.raises(NotFound, match="Did you mean 'only_alpha'"):
        resolve(snapshot, ["only_alpa"], max_url_params=10)
    with pytest.raises(NotFound, match="at most 1 URL parameters"):
        resolve(snapshot, ["only_alpha", "1", "2"], max_url_params=1)
    with pytest.raises(NotFound):
        resolve(snapshot, [], max_url_params=10)


def test_visibility_rules() -> None:
    admin = "00000000-0000-4000-8000-000000000000"
    anon = visible_to(None, admin)
    tenant = visible_to(TENANT_A, admin)
    assert anon(None) and anon(admin) and not anon(TENANT_A)
    assert tenant(TENANT_A) and tenant(admin) and not tenant("22222222-2222-4222-8222-222222222222")
    assert visible_to(admin, admin)(TENANT_A)
