"""Servers for tests, all on 127.0.0.1: the real service (`plaudit serve`, i.e. BentoML), and
scripted HTTP servers standing in for an LLM backend (answers and failures on cue)."""
from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from plaudit.service.launch import free_port, launched  # noqa: F401  free_port: for the tests

REPO = Path(__file__).resolve().parent.parent  # the checkout under test


@contextlib.contextmanager
def running_service(config: Path | None, tmp: Path, timeout: float = 240.0, env: dict[str, str] | None = None):
    """Yield (base URL, process) of a ready service; its log is in tmp/serve.log. `env` is added
    to the service's environment."""
    port = free_port()
    env = {**os.environ, "BENTOML_HOME": str(tmp / "bentoml"), "BENTOML_DO_NOT_TRACK": "True", **(env or {})}
    args = [str(Path(sys.executable).with_name("plaudit")), "serve", "--port", str(port)]
    if config:
        args += ["--config", str(config)]
    with launched(args, port, tmp / "serve.log", env, timeout, cwd=tmp) as service:  # from anywhere
        yield service.url, service.process


@contextlib.contextmanager
def http_server(handle: Callable[[BaseHTTPRequestHandler], None], lifetime_s: float = 60.0):
    """A threaded HTTP server on 127.0.0.1 calling `handle` for every POST and GET; yields its base
    URL. It shuts itself down after `lifetime_s` even if a test never stops it."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            handle(self)

        def do_GET(self):
            handle(self)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    backstop = threading.Timer(lifetime_s, server.shutdown)
    backstop.daemon = True
    backstop.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        backstop.cancel()
        server.shutdown()
        server.server_close()


def send_json(request: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode()
    try:
        request.send_response(status)
        for name, value in (headers or {}).items():
            request.send_header(name, value)
        request.send_header("content-type", "application/json")
        request.send_header("content-length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)
    except OSError:  # the client stopped waiting
        pass


class Fail(Exception):
    """Raised by a FakeLLM's `respond` to answer with an HTTP error instead."""

    def __init__(self, status: int):
        self.status = status


class FakeLLM:
    """An OpenAI chat-completions server whose answer is `respond(messages)`: the text, or
    (text, {token: logprob}) to return the first token's alternatives too. It keeps every
    request body, so a test can count what the judge asked."""

    def __init__(self, respond: Callable[[list[dict]], str | tuple[str, dict[str, float]]], delay_s: float = 0.0):
        self.respond, self.delay_s = respond, delay_s
        self.bodies: list[dict] = []
        self._lock = threading.Lock()

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        body = json.loads(request.rfile.read(int(request.headers["content-length"])))
        with self._lock:
            self.bodies.append(body)
        time.sleep(self.delay_s)
        try:
            answer = self.respond(body["messages"])
        except Fail as f:
            return send_json(request, f.status, {"error": f"scripted {f.status}"})
        text, alternatives = answer if isinstance(answer, tuple) else (answer, None)
        logprobs = None
        if alternatives is not None and body.get("logprobs"):
            top = [{"token": t, "logprob": lp} for t, lp in alternatives.items()]
            logprobs = {"content": [{"token": top[0]["token"], "logprob": top[0]["logprob"], "top_logprobs": top}]}
        send_json(request, 200, {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": "fake", "system_fingerprint": "",
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": logprobs,
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    def asked(self, needle: str) -> int:
        """Requests whose last message contains `needle`."""
        with self._lock:
            return sum(needle in b["messages"][-1]["content"] for b in self.bodies)

    @contextlib.contextmanager
    def serving(self, lifetime_s: float = 60.0):
        """`lifetime_s`: the backstop after which the server stops answering; a fixture that
        outlives one test needs more (after it, requests hang until the client's timeout)."""
        with http_server(self._handle, lifetime_s) as url:
            yield url
