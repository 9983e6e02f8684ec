"""API keys: an ASGI middleware in front of every endpoint but the open ones.

A key comes as `Authorization: Bearer KEY` (what OpenAI-style clients send) or
`X-API-Key: KEY`. Keys are kept and compared as SHA-256 digests with
`hmac.compare_digest`, against every configured key, so neither the time taken nor a
log line or traceback gives a key away.
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from .bodies import send_error
from .config import AuthConfig


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def presented_key(headers: Headers) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key") or None


class ApiKeyMiddleware:
    """`load` gives the auth settings when the server builds its app; None (the config could
    not be read, and the service is stopping with the reason) refuses every request."""

    def __init__(self, app: ASGIApp, load: Callable[[], AuthConfig | None]):
        self.app = app
        auth = load()
        self.closed = auth is None
        self.digests = [] if auth is None else [_digest(k) for k in auth.keys()]
        self.open_paths = set() if auth is None else set(auth.open_paths)

    def allows(self, headers: Headers) -> bool:
        key = presented_key(headers)
        if key is None:
            return False
        offered = _digest(key)
        matched = False
        for digest in self.digests:  # no early exit: the time does not say which key matched
            matched |= hmac.compare_digest(offered, digest)
        return matched

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (not self.digests and not self.closed or scope["type"] != "http" or scope.get("method") == "OPTIONS"
                or scope["path"] in self.open_paths or self.allows(Headers(scope=scope))):
            await self.app(scope, receive, send)
            return
        await send_error(send, 401, "missing or invalid API key: send `Authorization: Bearer KEY` or `X-API-Key: KEY`",
                         "Authorization", [(b"www-authenticate", b'Bearer realm="plaudit"')])
