"""The classic tasks API, persisted in the per-tenant document store (each tenant sees only its own tasks).

GET    /rest/services/todo/tasks/                 list: {"results": [task, ...], "cursor": null}  (?limit=&cursor=)
GET    /rest/services/todo/tasks/<id>/            one task, or 404
POST   /rest/services/todo/tasks/                 {"title": "...", "description": "...", "done": false} -> 201
PUT    /rest/services/todo/tasks/<id>/            {"done": true}: changes only the fields given -> the task
DELETE /rest/services/todo/tasks/<id>/            204, or 404

A task is {"id": str, "title": str, "description": str, "done": bool}; a wrong type or an unknown field is 422.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse, Response

from dpmsf_core import HTTPError, expose, store
from dpmsf_core.context import current
from dpmsf_core.errors import MethodNotAllowed, UnprocessableArguments

FIELDS: dict[str, type] = {"title": str, "description": str, "done": bool}
_LIST_PARAMS = ("limit", "cursor")

_tasks = store.collection("tasks")


@expose.endpoint(method="GET|POST|PUT|DELETE", API="tasks")
def tasks(*args: Any, **kwargs: Any) -> Any:
    """List, read, create, update and delete the caller's tasks; one API, the HTTP method picks the action."""
    info = current()
    method = info.method.upper() if info else "GET"
    task_id = kwargs.pop("parm_1", None)
    extra_parms = sorted(k for k in kwargs if k.startswith("parm_") and kwargs[k] is not None)
    if extra_parms:
        raise HTTPError(404, "A task URL is /tasks/ or /tasks/<id>/; nothing goes after the id.")
    kwargs = {k: v for k, v in kwargs.items() if not k.startswith("parm_")}
    if task_id is None:
        if method in ("GET", "HEAD"):
            return _list(kwargs)
        if method == "POST":
            return _create(kwargs, info.path if info else "")
        raise MethodNotAllowed(f"{method} needs a task id: /tasks/<id>/.", allow=["GET", "POST"])
    task_id = str(task_id)
    if method in ("GET", "HEAD"):
        return _found(_tasks.get(task_id), task_id)
    if method == "PUT":
        return _found(_tasks.update(task_id, _fields(kwargs, required=())), task_id)
    if method == "DELETE":
        if not _tasks.delete(task_id):
            raise HTTPError(404, f"No task with id '{task_id}'.")
        return Response(status_code=204)
    raise MethodNotAllowed(f"{method} takes no task id: use /tasks/.", allow=["GET", "PUT", "DELETE"])


def _found(task: dict[str, Any] | None, task_id: str) -> dict[str, Any]:
    if task is None:
        raise HTTPError(404, f"No task with id '{task_id}'.")
    return task


def _fields(values: dict[str, Any], required: tuple[str, ...]) -> dict[str, Any]:
    """The task fields in ``values``, type-checked; 422 naming every bad or unknown field."""
    errors = [
        {"param": name, "reason": f"expected {FIELDS[name].__name__}, got {type(values[name]).__name__}"}
        for name in FIELDS
        if name in values and not isinstance(values[name], FIELDS[name])
    ]
    errors += [{"param": name, "reason": "required"} for name in required if name not in values]
    errors += [{"param": name, "reason": "unknown field"} for name in values if name not in FIELDS]
    if "title" in values and isinstance(values["title"], str) and not values["title"].strip():
        errors.append({"param": "title", "reason": "must not be empty"})
    if errors:
        listed = ", ".join(f"{e['param']} ({e['reason']})" for e in errors)
        raise UnprocessableArguments(
            f"Invalid task: {listed}. Fields: title (str), description (str), done (bool).", errors=errors
        )
    return {name: values[name] for name in FIELDS if name in values}


def _create(values: dict[str, Any], path: str) -> JSONResponse:
    task = _tasks.create({"title": "", "description": "", "done": False, **_fields(values, required=("title",))})
    location = f"{path.rstrip('/')}/{task['id']}/" if path else None
    return JSONResponse({"results": task}, status_code=201, headers={"Location": location} if location else None)


def _list(params: dict[str, Any]) -> JSONResponse:
    unknown = sorted(set(params) - set(_LIST_PARAMS))
    if unknown:
        raise UnprocessableArguments(
            f"Unknown list parameter(s): {', '.join(unknown)}. Expected: limit, cursor.",
            errors=[{"param": name, "reason": "unknown"} for name in unknown],
        )
    raw_limit = params.get("limit", 100)
    try:
        limit = int(raw_limit)
    except (TypeError, ValueError):
        raise UnprocessableArguments(
            f"limit={raw_limit!r} is not an integer.", errors=[{"param": "limit", "reason": "not an integer"}]
        ) from None
    page, cursor = _tasks.list(limit=limit, cursor=params.get("cursor") or None)
    return JSONResponse({"results": page, "cursor": cursor})
