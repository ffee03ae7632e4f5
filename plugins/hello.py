"""The smallest plugin: one function, one endpoint.

GET  /rest/services/hello-world/?name=Ada
GET  /rest/services/hello-world/slug-or-numbers/
POST /rest/services/hello-world/   {"args": [1, 2], "name": "Ada"}
"""

from dpmsf_core import expose


@expose.endpoint(method="GET|PUT|POST", API="hello-world")
def foo(*args, **kwargs):
    """Say hello; echoes what it received so you can see the calling convention at work."""
    return {"hello": kwargs.get("name", "world"), "args": list(args), "kwargs": kwargs}
