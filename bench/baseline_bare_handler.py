"""The floor: the same functions as a hand-written Lambda handler (no framework), for REST v1 and HTTP API v2."""

import json

ROUTES = {"/rest/services/hello-sync/", "/rest/services/hello-async/"}


def handler(event: dict, context: object) -> dict:
    if event.get("version") == "2.0":
        method, path = event["requestContext"]["http"]["method"], event["rawPath"]
    else:
        method, path = event["httpMethod"], event["path"]
    if path not in ROUTES:
        return {"statusCode": 404, "body": ""}
    if method == "POST":
        name = json.loads(event.get("body") or "{}").get("name", "world")
    else:
        name = (event.get("queryStringParameters") or {}).get("name", "world")
    return {"statusCode": 200, "headers": {"content-type": "application/json"}, "body": json.dumps({"hello": name})}
