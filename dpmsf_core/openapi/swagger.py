"""Swagger UI for ``/docs``, served from files we ship (the copy inside aws-lambda-powertools): no CDN, so the
page works without internet; the page's script, style and settings never come from the request."""

from __future__ import annotations

SWAGGER_ASSETS = {
    "swagger-ui-bundle.min.js": "application/javascript; charset=utf-8",
    "swagger-ui.min.css": "text/css; charset=utf-8",
}


def swagger_html(openapi_url: str = "/openapi.json", assets: str = "/docs") -> bytes:
    """Swagger UI that works offline: its script and style come from us (``swagger_asset``), not from a CDN.

    ``openapi_url`` and ``assets`` are built from configuration only (never from the request), and are checked
    again here: they go into a page.
    """
    import html
    import json

    for url in (openapi_url, assets):
        if not url.startswith("/") or any(c in url for c in "\"'<>&\\ "):
            raise ValueError(f"unsafe URL for the docs page: {url!r}")
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>DPMSF services</title>
<link rel="stylesheet" href="{html.escape(assets)}/swagger-ui.min.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{html.escape(assets)}/swagger-ui-bundle.min.js"></script>
<script>
window.ui = SwaggerUIBundle({{url: {json.dumps(openapi_url)}, dom_id: "#swagger-ui", deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  layout: "BaseLayout"}});
</script>
</body>
</html>
"""
    return page.encode("utf-8")


def swagger_asset(name: str) -> tuple[bytes, str] | None:
    """Swagger UI's script or style, from the copy aws-lambda-powertools ships (a dependency already)."""
    content_type = SWAGGER_ASSETS.get(name)
    if content_type is None:
        return None
    from importlib.resources import files

    data = files("aws_lambda_powertools.event_handler.openapi.swagger_ui").joinpath(name).read_bytes()
    return data, content_type
