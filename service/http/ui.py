"""The review page at /ui: three static files, read once, served with a strict CSP.

No build step, no external CDN: everything the page needs comes from this service, so it
works on an air-gapped hospital network and leaks nothing to third parties.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import Response

STATIC = Path(__file__).with_name("static")
FILES = {
    "/ui": ("index.html", "text/html; charset=utf-8"),
    "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/ui/style.css": ("style.css", "text/css; charset=utf-8"),
}
UI_PATHS = frozenset(FILES)
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def add_ui_routes(app: FastAPI) -> None:
    """Serve the review page's files from memory."""
    for route, (name, media_type) in FILES.items():
        app.add_api_route(route, _responder((STATIC / name).read_bytes(), media_type), methods=["GET"], include_in_schema=False)


def _responder(content: bytes, media_type: str):  # noqa: ANN202 - a route endpoint
    async def serve() -> Response:
        return Response(content, media_type=media_type, headers=HEADERS)

    return serve
