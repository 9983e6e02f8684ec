"""Servers under load: `plaudit serve` and the naive baseline as subprocesses on 127.0.0.1
(each in its own process group, so stopping one stops its whole tree), and clients that
send them one item per request, as OpenRLHF calls a reward server.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import httpx2
import psutil
import yaml

from plaudit.rewardmodels import Item
from plaudit.service.config import DEFAULT_MODEL_DIR
from plaudit.service.launch import Launched, free_port, launched

REPO = Path(__file__).resolve().parent.parent
BT_ONLY = {"models": {"default": {"path": str(DEFAULT_MODEL_DIR)}}}  # no judge, so no llama.cpp


@dataclass
class Server(Launched):
    def rss_mib(self) -> float:
        """Resident memory of the whole process tree (supervisor, BentoML's arbiter and workers)."""
        root = psutil.Process(self.process.pid)
        total = 0
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total / 2**20

    def forward_stats(self, model: str = "default") -> dict:
        """A model's forward calls and the sequences they carried."""
        models = httpx2.get(f"{self.url}/models", timeout=30).json()["models"]
        return next(m["stats"] for m in models if m["name"] == model)


@contextlib.contextmanager
def _server(args: Sequence[str], port: int, log: Path, env: dict[str, str]) -> Iterator[Server]:
    with launched(args, port, log, env, cwd=REPO) as started:  # the naive server runs as benchmarks.naive_server
        yield Server(started.url, started.process, started.ready_s)


def plaudit(tmp: Path, config: dict | None = None):
    """`plaudit serve` with `config` (the default models and judge when None), BentoML's state in tmp."""
    port = free_port()
    args = [str(Path(sys.executable).with_name("plaudit")), "serve", "--port", str(port)]
    if config is not None:
        (tmp / "plaudit.yaml").write_text(yaml.safe_dump(config))
        args += ["--config", str(tmp / "plaudit.yaml")]
    env = {k: v for k, v in os.environ.items() if k != "PLAUDIT_CONFIG"}
    env.update(BENTOML_HOME=str(tmp / "bentoml"), BENTOML_DO_NOT_TRACK="True")
    return _server(args, port, tmp / "plaudit.log", env)


def naive(tmp: Path):
    port = free_port()
    return _server([sys.executable, "-m", "benchmarks.naive_server", str(port)], port, tmp / "naive.log",
                     dict(os.environ))


@dataclass
class Load:
    seconds: float
    latencies: list[float] = field(default_factory=list)  # of the answered requests
    errors: int = 0  # non-200 answers and failed connections
    rewards: dict[int, float] = field(default_factory=dict)  # item index -> reward, as answered

    @property
    def requests(self) -> int:
        return len(self.latencies) + self.errors


def drive(url: str, items: Sequence[Item], clients: int, seconds: float | None = None,
          requests: Sequence[Sequence[int]] | None = None, model: str | None = None) -> Load:
    """`clients` concurrent clients, one item per POST /score (or the items of each of
    `requests`, lists of indices, per POST) to `model` (the server's default when None), until
    every request was sent once or, given `seconds`, round the requests until then; the clock
    stops at the last answer."""
    return asyncio.run(_drive(url, items, clients, seconds, requests or [[i] for i in range(len(items))], model))


async def _drive(url: str, items: Sequence[Item], clients: int, seconds: float | None,
                 requests: Sequence[Sequence[int]], model: str | None) -> Load:
    chosen = {"model": model} if model else {}
    bodies = [{**chosen, "items": [items[i].model_dump() for i in request]} for request in requests]
    turns = itertools.count() if seconds else iter(range(len(requests)))
    load = Load(0.0)
    async with httpx2.AsyncClient(base_url=url, timeout=600, limits=httpx2.Limits(max_connections=clients)) as http:
        async def client() -> None:
            for turn in turns:
                if seconds and time.perf_counter() - start > seconds:
                    return
                sent = time.perf_counter()
                try:
                    answer = await http.post("/score", json=bodies[turn % len(bodies)])
                except httpx2.HTTPError:
                    load.errors += 1
                    continue
                if answer.status_code != 200:
                    load.errors += 1
                    continue
                load.latencies.append(time.perf_counter() - sent)
                load.rewards.update(zip(requests[turn % len(bodies)], answer.json()["rewards"]))

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        load.seconds = time.perf_counter() - start
    return load
