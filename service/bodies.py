"""Request bodies are JSON: an ASGI middleware answers a POST whose Content-Type says
otherwise with 415 before BentoML parses it. BentoML would read a form or multipart body
into a dict of garbled keys (a 400 that names none of the real fields), and a multipart
type without its boundary made it raise (a 500).

JSON is taken with any parameters (`application/json; charset=utf-8`), as `+json` types,
as `text/plain` (what a browser's fetch sends a string as) and without a Content-Type.
"""
from __future__ import annotations

import json

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

JSON_TYPES = {"application/json", "text/plain"}


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media in JSON_TYPES or (media.startswith("application/") and media.endswith("+json"))


async def send_error(send: Send, status: int, message: str, field: str | None,
                     headers: list[tuple[bytes, bytes]] = ()) -> None:
    """plaudit's error answer (`ErrorResponse`) from a middleware, before any endpoint runs."""
    body = json.dumps({"error": message, "field": field}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class JsonBodyMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST":
            content_type = Headers(scope=scope).get("content-type")
            if content_type is not None and not is_json(content_type):
                await send_error(send, 415, f"the body is JSON: send `Content-Type: application/json` "
                                            f"(got {content_type!r})", "Content-Type")
                return
        await self.app(scope, receive, send)
