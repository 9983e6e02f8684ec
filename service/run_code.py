"""SandboxFusion's `/run_code`, so that a trainer already pointed at a SandboxFusion server
(verl's `reward_model.sandbox_fusion.url`, the `sandbox-fusion` client) can point at plaudit.

It runs through the execution model's own sandbox, pool and build cache, never a weaker one:
no network at all, `memory_limit_MB` enforced as address space (raised to what a runtime
needs to start: a JVM or a Go binary reserves more than it uses; see `languages.py`).
Overall status as SandboxFusion decides it: `Failed` when the compile or the run failed or
timed out, `Success` otherwise; `SandboxError` only for plaudit's own faults.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import PurePosixPath

from plaudit.rewardmodels import InputError
from plaudit.rewardmodels.execution import Execution
from plaudit.rewardmodels.languages import LANGUAGES, by_name
from plaudit.rewardmodels.sandbox import Run
from plaudit.schemas import CommandRunResult, RunCodeRequest, RunCodeResponse


def run_code(execution: Execution, request: RunCodeRequest) -> RunCodeResponse:
    language = by_name(request.language)
    if language is None:
        raise InputError("language", f"plaudit runs {', '.join(repr(n) for n in LANGUAGES)}; not "
                                     f"{request.language!r}")
    if language.missing:
        raise InputError("language", f"{language.name} is not available here: {', '.join(language.missing)} "
                                     f"missing ({language.install})")
    files = _files(request.files)
    programs = execution.programs
    with programs.built(language, request.code, request.compile_timeout) as build:
        compiled = _result(build.compile) if language.compile else None
        if not build.ok:
            return RunCodeResponse(status="Failed", compile_result=compiled, executor_pod_name=_pod())
        memory = request.memory_limit_MB if request.memory_limit_MB > 0 else None
        limits = programs.limits(language, request.run_timeout, memory)
        with execution.sandbox.folder(files) as folder:
            run = programs.run(build, (request.stdin or "").encode(), limits, folder if files else None,
                               tuple(request.fetch_files))
    fetched = _fetched(run) if request.fetch_files else {}
    result = _result(run)
    failed = result.status != "Finished" or result.return_code != 0
    return RunCodeResponse(status="Failed" if failed else "Success", compile_result=compiled, run_result=result,
                           executor_pod_name=_pod(), files=fetched)


def _files(files: dict[str, str | None]) -> dict[str, bytes]:
    decoded = {}
    for path, content in files.items():
        if content is None:  # as SandboxFusion: skipped
            continue
        parts = PurePosixPath(path).parts
        if not parts or PurePosixPath(path).is_absolute() or ".." in parts:
            raise InputError(f"files[{path!r}]", "a relative path inside the working folder")
        try:
            decoded[path] = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise InputError(f"files[{path!r}]", "base64 content") from None
    return decoded


def _result(run: Run | None) -> CommandRunResult | None:
    if run is None:  # a build found in the cache of an interpreted language: nothing was compiled
        return None
    stdout, stderr = run.stdout.decode(errors="replace"), run.stderr.decode(errors="replace")
    if run.timed_out:
        return CommandRunResult(status="TimeLimitExceeded", execution_time=run.seconds, stdout=stdout, stderr=stderr)
    if run.output_exceeded:  # killed, as a program that overran a limit is
        return CommandRunResult(status="Finished", execution_time=run.seconds, return_code=-9, stdout=stdout,
                                stderr=stderr + "\n[plaudit: the output limit was exceeded; the program was killed]")
    return CommandRunResult(status="Finished", execution_time=run.seconds, return_code=run.returncode,
                            stdout=stdout, stderr=stderr)


def _fetched(run: Run) -> dict[str, str]:
    try:
        fetched = json.loads(run.result)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}  # the run ended before the files were read back
    return {k: v for k, v in fetched.items() if isinstance(k, str) and isinstance(v, str)} \
        if isinstance(fetched, dict) else {}


def _pod() -> str | None:
    return os.environ.get("MY_POD_NAME")  # as SandboxFusion reports its executor
