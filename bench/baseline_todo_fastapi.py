"""The todo plugin's list and create handlers written directly in FastAPI, on the same store code.

    TODO_DB=/tmp/x/store.db uvicorn bench.baseline_todo_fastapi:app

Same SQLite backend class (``dpmsf_core.store.SQLiteStore``), the anonymous tenant ``"_"`` and collection
``"tasks"``, so against ``plugins/todo.py`` served by DPMSF only the framework differs. Handlers are plain ``def``
(FastAPI runs them in its thread pool, as DPMSF runs sync plugin functions), with the same checks and answers:

GET  /tasks/?limit=&cursor=   {"results": [task, ...], "cursor": ...}
POST /tasks/                  {"title": "...", "description": "...", "done": false} -> 201 {"results": task}, Location

``/tasks/`` is what one would write idiomatically (pydantic model in, dicts out encoded by FastAPI; no return
annotation, so no response-model validation);
``/raw/tasks/`` builds the JSONResponse itself, as the plugin does (skips FastAPI's response encoding).
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, field_validator

from dpmsf_core.store import ANONYMOUS_TENANT, SQLiteStore

TENANT = ANONYMOUS_TENANT
COLLECTION = "tasks"

store = SQLiteStore(os.environ.get("TODO_DB", ".dpmsf/baseline-store.db"))
app = FastAPI()


class TaskIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # unknown fields and wrong types are 422, as in the plugin

    title: str
    description: str = ""
    done: bool = False

    @field_validator("title")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


def _create(task: TaskIn) -> dict[str, Any]:
    task_id = uuid.uuid4().hex
    return store.put(TENANT, COLLECTION, task_id, {"id": task_id, **task.model_dump()})


def _list(limit: int, cursor: str | None) -> dict[str, Any]:
    page, next_cursor = store.list(TENANT, COLLECTION, limit, cursor or None)
    return {"results": page, "cursor": next_cursor}


@app.get("/tasks/")
def list_tasks(limit: int = Query(100, ge=1, le=1000), cursor: str | None = None):  # no return type: no response model
    return _list(limit, cursor)


@app.post("/tasks/", status_code=201)
def create_task(task: TaskIn, request: Request, response: Response):
    doc = _create(task)
    response.headers["Location"] = f"{request.url.path.rstrip('/')}/{doc['id']}/"
    return {"results": doc}


@app.get("/raw/tasks/")
def list_tasks_raw(limit: int = Query(100, ge=1, le=1000), cursor: str | None = None) -> JSONResponse:
    return JSONResponse(_list(limit, cursor))


@app.post("/raw/tasks/", status_code=201)
def create_task_raw(task: TaskIn, request: Request) -> JSONResponse:
    doc = _create(task)
    location = f"{request.url.path.rstrip('/')}/{doc['id']}/"
    return JSONResponse({"results": doc}, status_code=201, headers={"Location": location})
