"""Serve under a gateway's path prefix (CXR_ROOT_PATH) whether the gateway strips it or passes it on.

ASGI, and Starlette's routing and static files with it, expect `path` to start with `root_path`
(the prefix). A gateway that passes the prefix on sends exactly that; one that strips it sends
`/predict` for `/cxr/predict`. Routes cope with both, but mounted apps (the docs' assets) do not,
so a stripped path gets its prefix back here, as uvicorn's own --root-path would do. Not uvicorn's
option itself: it prefixes every path, a kept prefix too (`/cxr/cxr/predict`).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class PathPrefix:
    """Give `path` (and `raw_path`) the prefix `root_path` when the gateway stripped it."""

    def __init__(self, app: ASGIApp, *, root_path: str) -> None:
        self.app = app
        self.root_path = root_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path != self.root_path and not path.startswith(self.root_path + "/"):
            raw_path = scope.get("raw_path") or path.encode()
            scope = {**scope, "path": self.root_path + path, "raw_path": self.root_path.encode() + raw_path}
        await self.app(scope, receive, send)
