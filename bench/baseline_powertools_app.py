"""The anchor a Powertools user would deploy: an event-handler resolver with Logger and Metrics decorators.

The same functions at the same URLs as ``baseline_lambda_app.py``. Powertools' resolvers are synchronous, so the
"async" URLs are plain functions here too; REST v1 and HTTP API v2 events each get their own resolver, as they
would in two deployments (one handler picks by the event's ``version``).
"""

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, APIGatewayRestResolver
from aws_lambda_powertools.metrics import MetricUnit

logger = Logger()
metrics = Metrics()
rest = APIGatewayRestResolver()
http = APIGatewayHttpResolver()


def _routes(app: APIGatewayRestResolver | APIGatewayHttpResolver) -> None:
    for name in ("hello-sync", "hello-async"):

        @app.get(f"/rest/services/{name}/")
        def hello_get() -> dict[str, str]:
            return {"hello": app.current_event.get_query_string_value("name", "world") or "world"}

        @app.post(f"/rest/services/{name}/")
        def hello_post() -> dict[str, str]:
            return {"hello": (app.current_event.json_body or {}).get("name", "world")}


_routes(rest)
_routes(http)


@logger.inject_lambda_context(correlation_id_path="requestContext.requestId")
@metrics.log_metrics
def handler(event: dict, context: object) -> dict:
    metrics.add_metric(name="Requests", unit=MetricUnit.Count, value=1)
    resolver = http if event.get("version") == "2.0" else rest
    return resolver.resolve(event, context)
