"""The classic tasks API, persisted in the per-tenant document store (each tenant sees only its own tasks).

GET    /rest/services/todo/tasks/                 list: {"results": [task, ...], "cursor": null}  (?limit=&cursor=)
GET    /rest/services/todo/tasks/<id>/            one task, or 404
POST   /rest/services/todo/tasks/                 {"title": "...", "description": "...", "done": false} -> 201
PUT    /rest/services/todo/tasks/<id>/            {"done": true}: changes only the fields given -> the task
DELETE /rest/services/todo/tasks/<id>/            204, or 404

A task is {"id": str, "title": str, "description": str, "done": bool}; a wrong type or an unknown field is 422.
One function per method and URL shape (``path="tasks/{task_id}"``), written on the public API only.

The demo is served to anonymous callers, so it bounds what they can make it store and answer: a title of at most
200 characters, a description of at most 2,000, a page of at most 100 tasks (20 by default), an id of at most 64.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import JSONResponse, Response

from dpmsf_core import HTTPError, RequestInfo, expose, store

_tasks = store.collection("tasks")

Title = Annotated[str, Field(min_length=1, max_length=200, pattern=r"\S")]
Description = Annotated[str, Field(max_length=2_000)]
TaskId = Annotated[str, Field(min_length=1, max_length=64)]


class NewTask(BaseModel):
    """The body of a POST: a title is required, the rest has defaults; no other field."""

    model_config = ConfigDict(extra="forbid", strict=True)

    title: Title
    description: Description = ""
    done: bool = False


class TaskChanges(BaseModel):
    """The body of a PUT: only the fields given change."""

    model_config = ConfigDict(extra="forbid", strict=True)

    # None only marks "not given": the types say no null (so OpenAPI offers none) and a null sent is refused below
    title: Title = None  # type: ignore[assignment]
    description: Description = None  # type: ignore[assignment]
    done: bool = None  # type: ignore[assignment]

    @field_validator("*", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("cannot be null; leave the field out to keep its value")
        return value


@expose.endpoint(method="GET", path="tasks")
def list_tasks(limit: Annotated[int, Field(ge=1, le=100)] = 20, cursor: str | None = None) -> JSONResponse:
    """The caller's tasks, 20 at a time by default (at most 100): pass the answer's ``cursor`` for the next page."""
    page, next_cursor = _tasks.list(limit=limit, cursor=cursor or None)
    return JSONResponse({"results": page, "cursor": next_cursor})


@expose.endpoint(method="POST", path="tasks")
def create_task(task: NewTask, request: RequestInfo) -> JSONResponse:
    """Create a task: 201, with its URL in ``Location``."""
    created = _tasks.create(task.model_dump())
    location = f"{request.root_path}{request.path.rstrip('/')}/{created['id']}/"
    return JSONResponse({"results": created}, status_code=201, headers={"Location": location})


@expose.endpoint(method="GET", path="tasks/{task_id}")
def get_task(task_id: TaskId) -> dict[str, object]:
    """One task, or 404."""
    return _found(_tasks.get(task_id), task_id)


@expose.endpoint(method="PUT", path="tasks/{task_id}")
def update_task(task_id: TaskId, changes: TaskChanges) -> dict[str, object]:
    """Change the fields given (``{"done": true}``); the others keep their values."""
    return _found(_tasks.update(task_id, changes.model_dump(exclude_unset=True)), task_id)


@expose.endpoint(method="DELETE", path="tasks/{task_id}")
def delete_task(task_id: TaskId) -> Response:
    """Delete a task: 204, or 404."""
    if not _tasks.delete(task_id):
        raise HTTPError(404, f"No task with id '{task_id}'.")
    return Response(status_code=204)


def _found(task: dict[str, object] | None, task_id: str) -> dict[str, object]:
    if task is None:
        raise HTTPError(404, f"No task with id '{task_id}'.")
    return task
