"""Optional API-key authentication, off unless keys are configured.

A key arrives as `Authorization: Bearer <key>` or `X-API-Key: <key>`. The presented key is
hashed and its SHA-256 digest compared with the digest of every configured key using
`hmac.compare_digest`, with no early exit: the time taken depends on neither the position
of a mismatch, nor the key's length, nor which key (if any) matched. Probes stay open so an
orchestrator can check the service without holding a secret.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import ErrorCode
from service.http.errors import error_body

MIN_KEY_LENGTH = 16
PROBE_PATHS = frozenset({"/live", "/ready"})
CHALLENGE = 'Bearer realm="cxr-effusion"'


class AuthConfigError(ValueError):
    """The configured keys cannot be used; start-up must stop rather than run unprotected."""


def load_api_keys(keys: str | None, keys_file: Path | None) -> list[str]:
    """Keys from a comma-separated value and/or a file (one per line, `#` comments); [] means auth off."""
    found = [key.strip() for key in (keys or "").split(",") if key.strip()]
    if keys_file is not None:
        try:
            lines = Path(keys_file).read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise AuthConfigError(f"cannot read API keys file {keys_file}: {error.strerror or error}") from error
        from_file = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not from_file:
            raise AuthConfigError(f"API keys file {keys_file} holds no key")  # fail closed, never open
        found += from_file
    short = [key for key in found if len(key) < MIN_KEY_LENGTH]
    if short:
        raise AuthConfigError(f"{len(short)} API key(s) shorter than {MIN_KEY_LENGTH} characters")
    return found


class KeyChecker:
    """Holds only digests of the keys and checks a presented key against all of them."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [_digest(key) for key in keys]

    def accepts(self, presented: str | None) -> bool:
        candidate = _digest(presented or "")
        matched = False
        for digest in self._digests:  # every digest, every time: no early exit
            matched |= hmac.compare_digest(candidate, digest)
        return matched  # no configured key is empty, so a missing key never matches


def presented_key(headers: Headers) -> str | None:
    """The key from `X-API-Key`, or from `Authorization: Bearer`; None when neither is present."""
    api_key = headers.get("x-api-key")
    if api_key:
        return api_key
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


def document_security(schema: dict[str, Any], open_paths: frozenset[str]) -> dict[str, Any]:
    """Declare both key schemes in an OpenAPI schema, so clients and Swagger UI know to send one."""
    schema.setdefault("components", {})["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API key>"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }
    schema["security"] = [{"bearer": []}, {"apiKey": []}]
    for path in open_paths & schema.get("paths", {}).keys():
        for operation in schema["paths"][path].values():
            operation["security"] = []  # probes need no key
    return schema


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class ApiKeyMiddleware:
    """401 `unauthorized` for every request without a valid key, except on `open_paths`."""

    def __init__(self, app: ASGIApp, *, checker: KeyChecker, open_paths: frozenset[str]) -> None:
        self.app = app
        self.checker = checker
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        if self.checker.accepts(presented_key(Headers(scope=scope))):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["error_code"] = ErrorCode.UNAUTHORIZED
        body = error_body(ErrorCode.UNAUTHORIZED, "a valid API key is required", state.get("request_id", ""))
        response = JSONResponse(body, status_code=401, headers={"WWW-Authenticate": CHALLENGE})
        await response(scope, receive, send)
