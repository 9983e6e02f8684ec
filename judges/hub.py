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
from concurrent.futures import CancelledError, Future
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
        self._closed = False
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
        if self._closed:
            coroutine.close()
            raise HubClosed("the judge backends are closed")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """The coroutine's result, waited for in slices: a hub closed meanwhile (its loop gone)
        is an error, never a wait without end."""
        done = self.submit(coroutine)
        while True:
            try:
                return done.result(timeout=1.0)
            except TimeoutError:
                if not self._thread.is_alive():
                    done.cancel()
                    raise HubClosed("the judge backends were closed before this call finished") from None
            except CancelledError:
                raise HubClosed("the judge backends were closed before this call finished") from None

    def stats(self) -> dict[str, Any]:
        return {name: backend.stats() for name, backend in self._backends.items()}

    def close(self) -> None:
        """Cancel the calls still running (their callers get HubClosed), close the backends,
        stop the local servers and the loop."""
        if self._closed:
            return
        self.run(_cancel_others())
        for backend in self._backends.values():
            self.run(backend.aclose())
        self._closed = True
        self._backends.clear()
        for server in self._servers.values():
            server.stop()
        self._servers.clear()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


class HubClosed(RuntimeError):
    """A judge call made or still running when its backends were closed (the service stopping)."""


async def _cancel_others() -> None:
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


async def _make_backend(config: BackendConfig) -> Backend:
    return Backend(config)
