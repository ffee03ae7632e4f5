"""Version 2 of the same API under the alias ``v2``: ``/rest/services/v2/api-name/update/123456789/``."""

from dpmsf_core import expose

__alias__ = "v2"


@expose.endpoint(method=["GET", "PUT", "POST"], API="api-name")
def api_name_v2(*args, **kwargs):
    """Version 2 of api-name: also says which action the first URL parameter asked for."""
    return {"version": 2, "action": kwargs.get("parm_1"), "args": list(args), "kwargs": kwargs}
