"""``/docs`` in a real headless Chromium with no network but loopback: Swagger UI comes from files we ship.

Skipped, saying how to install it, when Chromium is missing (see test_browser_token.py).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from test_browser_token import chromium, dump_dom

pytestmark = pytest.mark.slow


def test_docs_render_every_endpoint_offline(bundled_client: httpx.Client, tmp_path: Path) -> None:
    browser = chromium()
    page = bundled_client.get("/docs")
    assert "cdn" not in page.text.lower() and "http" not in page.text  # nothing is fetched from elsewhere
    for asset in ("swagger-ui-bundle.min.js", "swagger-ui.min.css"):
        r = bundled_client.get(f"/docs/{asset}")
        assert r.status_code == 200 and len(r.content) > 100_000
    dom = dump_dom(browser, str(bundled_client.base_url).rstrip("/") + "/docs", tmp_path / "profile")
    assert 'class="swagger-ui"' in dom
    assert "opblock" in dom  # operations were rendered from /openapi.json
    assert "/rest/services/hello-world/" in dom
