"""The same functions as a Chalice app (``pip install chalice``; the bench skips it without).

Chalice deploys one API Gateway resource per route, so its events carry that route as ``resourcePath``;
``prepare`` gives the bench's ``/{proxy+}`` events that shape once, before they are timed. Chalice reads REST
(payload 1.0) events only: the HTTP API cases have no Chalice figure.
"""

from chalice import Chalice

app = Chalice(app_name="bench")


def _hello() -> dict[str, str]:
    request = app.current_request
    if request.method == "POST":
        return {"hello": (request.json_body or {}).get("name", "world")}
    return {"hello": (request.query_params or {}).get("name", "world")}


for _name in ("hello-sync", "hello-async"):
    app.route(f"/rest/services/{_name}", methods=["GET", "POST"], name=_name)(_hello)

handler = app


def prepare(event: dict) -> dict | None:
    """The event as API Gateway sends it to a Chalice route; None for a kind Chalice does not serve."""
    if event.get("version") == "2.0":
        return None
    route = event["path"].rstrip("/")
    return {**event, "resource": route, "requestContext": {**event["requestContext"], "resourcePath": route}}
