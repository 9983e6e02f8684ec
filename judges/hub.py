"""The judges' backends by name, on one event loop of their own.

The scorer interface is synchronous (the service calls it from request threads, the CLI
from its workers), while a `Backend` is asyncio. The hub runs one loop in a thread and
takes coroutines from any thread, so every caller of a backend shares its one
concurrency limit, as the reward models' callers share their batcher. A backend that is
the local llama.cpp server is started when the hub first needs it.
"""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any, Coroutine, TypeVar

from .backends import Backend, BackendConfig
from .local import LocalBackendConfig, LocalServer

T = TypeVar("T")
BackendSpec = BackendConfig | LocalBackendConfig


class BackendHub:
    """`hub.backend(name)` for a judge; `hub.run(coroutine)` from any thread but the hub's."""

    def __init__(self, specs: dict[str, BackendSpec]):
        self.specs = specs
        self._backends: dict[str, Backend] = {}
        self._servers: dict[str, LocalServer] = {}
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="judge-backends", daemon=True)
        self._thread.start()

    def backend(self, name: str) -> Backend:
        with self._lock:
            if name not in self._backends:
                spec = self.specs[name]
                if isinstance(spec, LocalBackendConfig):
                    server = self._servers[name] = spec.server()
                    spec = spec.client(server.start())
                # Built on the hub's loop: the client's session and semaphore belong to it.
                self._backends[name] = self.run(_make_backend(spec))
            return self._backends[name]

    def identity(self, name: str) -> str:
        """What produced an answer, stable across restarts (a local server's port is not)."""
        spec = self.specs[name]
        if isinstance(spec, LocalBackendConfig):
            return f"llama.cpp:{LocalServer(spec.gguf).model.name}"
        return f"{spec.model or 'default'}@{spec.url}"

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.submit(coroutine).result()

    def stats(self) -> dict[str, Any]:
        return {name: backend.stats() for name, backend in self._backends.items()}

    def close(self) -> None:
        for backend in self._backends.values():
            self.run(backend.aclose())
        self._backends.clear()
        for server in self._servers.values():
            server.stop()
        self._servers.clear()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


async def _make_backend(config: BackendConfig) -> Backend:
    return Backend(config)
