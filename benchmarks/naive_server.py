"""A reward server as OpenRLHF's serve_rm.py builds one: an async endpoint that runs the
model on its own request's items, blocking the event loop meanwhile, so requests are
scored one at a time and never batched together. The baseline /score must beat.

    python -m benchmarks.naive_server PORT
"""
from __future__ import annotations

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from plaudit.rewardmodels import Item

from .workload import forward, load_model

model = load_model()
counts = {"forward_calls": 0, "sequences": 0}  # the shape of plaudit's GET /models stats


async def score(request: Request) -> JSONResponse:
    items = [Item(**item) for item in (await request.json())["items"]]
    rewards = forward(model, items)
    counts["forward_calls"] += 1
    counts["sequences"] += len(items)
    return JSONResponse({"rewards": rewards})


async def models(request: Request) -> JSONResponse:
    return JSONResponse({"models": [{"name": model.name, "stats": counts}]})


async def health(request: Request) -> JSONResponse:
    return JSONResponse({})


app = Starlette(routes=[Route("/score", score, methods=["POST"]), Route("/models", models),
                        Route("/readyz", health)])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
