"""Versioning several APIs by module name: ``/rest/services/product_v2/api-name/update/123456789/``."""

from dpmsf_core import expose


@expose.endpoint(method="GET|PUT|POST", API="api-name")
def api_name(*args, **kwargs):
    """Product API, version 2."""
    return {"product": "v2", "args": list(args), "kwargs": kwargs}
