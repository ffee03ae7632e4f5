"""Version 1 of a small API, published under the alias ``v1`` (the module's real name stays hidden).

POST /rest/services/v1/sample-one/1/2/3/4/5/6/7/8/9/10/?a=1&b=2&c=3&d=4
     {"args": [1, 2, 3, 4, 5, 6], "name1": "one", ..., "__map__": {"parm_1": "p1", ...}}
GET  /rest/services/v1/api-name/update/123456789/?a=1&b=2&c=3&d=4
"""

from dpmsf_core import expose

__alias__ = "v1"


@expose.endpoint(method=["GET", "PUT", "POST", "DELETE"], API="sample-one")
def sample_one(*args, **kwargs):
    """Echo positional args and keyword args: query params, URL params (parm_1..), body keys."""
    return {"args": list(args), "kwargs": kwargs}


@expose.endpoint(method="GET|PUT|POST".split("|"), API="api-name")
def api_name_v1(*args, **kwargs):
    """Version 1 of api-name."""
    return {"version": 1, "args": list(args), "kwargs": kwargs}
