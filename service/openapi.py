"""The OpenAPI document (`/docs.json`, behind `/docs`) as the schemas mean it.

BentoML inlines each endpoint's body and answer and keeps only the first member of every
top-level union, so `model: str | None` reads as a string and a chat prompt as a string.
Its `components` keep the pydantic schemas whole: each operation is pointed at them, the
error answers plaudit gives are documented, and so is GET /models, which BentoML's
document does not list.
"""
from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from plaudit.schemas import ErrorResponse, ModelsResponse

DOCUMENT = "/docs.json"
ERRORS = {"401": "no valid API key (when keys are configured)", "404": "an unknown model or judge",
          "413": "over a configured limit, named in the message",
          "415": "a body that is not JSON (a form or multipart Content-Type)",
          "422": "input the model cannot score, field named",
          "503": "overloaded, or a judge's backend failed every item: retry after Retry-After"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(description: str, schema: dict) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def exact(document: dict[str, Any]) -> dict[str, Any]:
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for model in (ErrorResponse, ModelsResponse):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    for methods in document.get("paths", {}).values():
        operation = methods.get("post")
        if operation is None:
            continue
        bodies = [operation.get("requestBody", {}), operation.get("responses", {}).get("200", {})]
        for body in bodies:
            content = body.get("content", {}).get("application/json", {})
            title = content.get("schema", {}).get("title")
            if title in schemas:
                content["schema"] = _ref(title)
        for status, description in ERRORS.items():
            operation.setdefault("responses", {}).setdefault(status, _json(description, _ref("ErrorResponse")))
    document["paths"]["/models"] = {"get": {"summary": "the served models and judges, their kinds and counters",
                                            "responses": {"200": _json("what is loaded", _ref("ModelsResponse"))}}}
    return document


class ExactOpenAPI:
    """An ASGI middleware that rewrites BentoML's `/docs.json` answer with `exact`."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != DOCUMENT:
            await self.app(scope, receive, send)
            return
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def keep(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            else:
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, keep)
        body = b"".join(chunks)
        if start.get("status") == 200:
            body = json.dumps(exact(json.loads(body))).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
