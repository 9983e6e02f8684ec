"""One runner for every language: compile a program once (inside the sandbox, under its own
time and memory limits), keep the build while it is asked for again, and run it as often as
there are inputs. The execution kind and `/run_code` both run programs through here.

Builds are cached by (language, compile command, code): a GRPO group often repeats a
response, and a response is run once per test. The cache holds at most `cache_size` builds;
the least recently used one that no run holds is removed first.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import threading
from collections import OrderedDict
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

from .languages import Language, resolve
from .sandbox import Job, Run, Sandbox, SandboxLimits

COMPILER_MESSAGE_CHARS = 2000
FILES_RUNNER = (Path(__file__).parent / "exec_files.py").read_text()


@dataclass
class Build:
    """A program ready to run, or the reason it is not (`compile` holds the compiler's run)."""

    language: Language
    code: str
    folder: Path | None  # read-only at /code when it runs
    compile: Run | None = None
    users: int = field(default=0, compare=False)

    @property
    def ok(self) -> bool:
        return self.folder is not None

    @property
    def compile_message(self) -> str:
        """What the compiler said, cut (its first errors are the useful ones)."""
        if self.compile is None:
            return ""
        if self.compile.timed_out:
            return "the compiler did not finish within its time limit"
        if self.compile.output_exceeded:
            return "the compiler wrote more than the output limit"
        text = (self.compile.stderr + self.compile.stdout).decode(errors="replace")
        return text if len(text) <= COMPILER_MESSAGE_CHARS else text[:COMPILER_MESSAGE_CHARS] + "\n[... cut]"


class Programs:
    def __init__(self, sandbox: Sandbox, compile_s: float = 20.0, cache_size: int = 256):
        self.sandbox, self.compile_s, self.cache_size = sandbox, compile_s, cache_size
        self._builds: OrderedDict[str, Future] = OrderedDict()
        self._lock = threading.Lock()
        self._runner = Path(tempfile.mkdtemp(prefix="plaudit-runner-"))  # exec_files.py alone, for /runner
        (self._runner / "exec_files.py").write_text(FILES_RUNNER)
        self._runner.chmod(0o755)

    def limits(self, language: Language, wall_s: float, memory_mb: int | None = None) -> SandboxLimits:
        """A run's limits: the sandbox's, with the wall time asked for and the language's needs."""
        base = self.sandbox.limits
        return replace(base, wall_s=wall_s, cpu_s=int(wall_s) + 1,
                       memory_mb=max(memory_mb or base.memory_mb, language.memory_floor_mb),
                       processes=base.processes + language.processes)

    @contextmanager
    def built(self, language: Language, code: str, compile_s: float | None = None) -> Iterator[Build]:
        """The program's build, compiled now (within `compile_s`, else the default) or found in
        the cache; held while the block runs. A compile that timed out is not kept: another
        time, or a longer limit, it may finish."""
        key = hashlib.sha256("\0".join([language.name, *language.compile, code]).encode()).hexdigest()
        with self._lock:
            future = self._builds.get(key)
            owner = future is None
            if owner:
                future = self._builds[key] = Future()
            self._builds.move_to_end(key)
        if owner:
            try:
                build = self._build(language, code, compile_s or self.compile_s)
                future.set_result(build)
                if build.compile is not None and build.compile.timed_out:
                    with self._lock:
                        self._builds.pop(key, None)
            except BaseException as e:  # a Busy sandbox: the next asker tries again
                with self._lock:
                    self._builds.pop(key, None)
                future.set_exception(e)
                raise
        build = future.result()
        with self._lock:
            build.users += 1
        try:
            yield build
        finally:
            with self._lock:
                build.users -= 1
                self._evict()

    def _evict(self) -> None:
        """Drop the least recently used idle builds past the cache's size (under the lock)."""
        for key in list(self._builds):
            if len(self._builds) <= self.cache_size:
                return
            future = self._builds[key]
            if future.done() and future.exception() is None and future.result().users == 0:
                del self._builds[key]
                if future.result().folder is not None:
                    shutil.rmtree(future.result().folder, ignore_errors=True)

    def _build(self, language: Language, code: str, compile_s: float) -> Build:
        name = language.source_name(code)
        if not language.compile:
            folder = self.sandbox.writable_folder()
            (folder / name).write_text(code)
            folder.chmod(0o755)
            return Build(language, code, folder)
        out = self.sandbox.writable_folder()
        base = self.sandbox.limits
        limits = replace(base, wall_s=compile_s, cpu_s=int(compile_s) + 1,
                         memory_mb=language.compile_memory_mb, processes=base.processes + language.processes + 64,
                         work_mb=max(base.work_mb, 512))
        with self.sandbox.folder({name: code}) as sources:
            run = self.sandbox.run_job(Job(resolve(language.argv(language.compile, code)), sources, out=out,
                                           binds=language.extra_binds, env=language.env, limits=limits))
        if run.returncode != 0:
            shutil.rmtree(out, ignore_errors=True)
            return Build(language, code, None, run)
        out.chmod(0o755)
        return Build(language, code, out, run)

    def run(self, build: Build, stdin: bytes, limits: SandboxLimits, files: Path | None = None,
            fetch: tuple[str, ...] = ()) -> Run:
        """One run of a build, with `stdin`, under `limits` (see `limits`); with `files` (a
        folder copied into the working folder first) or `fetch` (paths whose contents come
        back as `Run.result`, {path: base64}) it runs inside exec_files.py."""
        language = build.language
        argv = resolve(language.argv(language.run, build.code))
        binds = language.extra_binds
        if files is not None or fetch:
            argv = (self.sandbox.python, "-I", "-B", "/runner/exec_files.py", "{result_fd}", json.dumps(fetch),
                    "/files" if files is not None else "", "--", *argv)
            binds += (f"{self._runner}:/runner",) + ((f"{files}:/files",) if files is not None else ())
        return self.sandbox.run_job(Job(argv, build.folder, stdin, binds=binds, env=language.env, limits=limits))

    def close(self) -> None:
        with self._lock:
            for future in self._builds.values():
                if future.done() and future.exception() is None and future.result().folder is not None:
                    shutil.rmtree(future.result().folder, ignore_errors=True)
            self._builds.clear()
        shutil.rmtree(self._runner, ignore_errors=True)
