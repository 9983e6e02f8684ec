"""TICK checklists, generated once per (judge, instruction) and kept on disk.

A checklist depends only on the instruction, so every response to it, in this process,
in a later batch run or after a restart, reuses the same questions. Concurrent requests
for one instruction wait for a single generation instead of each starting their own.
Memory keeps the most recently used `memory_entries` checklists (TICK as an RL reward meets
ever-new prompts: unbounded, the process would grow without end); the disk keeps them all.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Awaitable, Callable

from plaudit.files import write_atomically
from plaudit.rewardmodels.loading import cache_dir


MEMORY_ENTRIES = 4096  # checklists of 2-8 questions: a few MB


def default_dir() -> Path:
    return cache_dir() / "checklists"


class ChecklistStore:
    """`await store.get(judge_identity, instruction, generate)`: the questions, and where they came from."""

    def __init__(self, directory: str | os.PathLike | None = None, memory_entries: int = MEMORY_ENTRIES):
        self.directory = Path(directory) if directory else default_dir()
        self.memory_entries = memory_entries
        # generated, failed (generations that gave no checklist), cache (hits), shared (waited for
        # another caller's generation), evicted (dropped from memory, still on disk)
        self.counts: Counter[str] = Counter()
        self._memory: OrderedDict[str, list[str]] = OrderedDict()
        self._pending: dict[str, asyncio.Future[list[str] | None]] = {}

    @staticmethod
    def key(identity: str, instruction: str) -> str:
        return hashlib.sha256(json.dumps([identity, instruction]).encode()).hexdigest()

    async def get(self, identity: str, instruction: str,
                  generate: Callable[[], Awaitable[list[str] | None]]) -> tuple[list[str] | None, str]:
        """(questions, "cache" | "generated"); questions None when generation failed (not stored,
        so a later call tries again)."""
        key = self.key(identity, instruction)
        questions = self._memory.get(key) or self._read(key)
        if questions is not None:
            self._remember(key, questions)
            self.counts["cache"] += 1
            return questions, "cache"
        if key in self._pending:  # another caller is generating it: share that one
            questions = await asyncio.shield(self._pending[key])
            self.counts["shared"] += 1
            return questions, "cache"
        future = self._pending[key] = asyncio.get_running_loop().create_future()
        try:
            questions = await generate()
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved: waiters re-raise it, nobody logs it as lost
            raise
        finally:
            del self._pending[key]
        future.set_result(questions)
        if questions is None:
            self.counts["failed"] += 1
            return None, "generated"
        self.counts["generated"] += 1
        self._remember(key, questions)
        self._write(key, {"judge": identity, "instruction": instruction, "questions": questions})
        return questions, "generated"

    def _remember(self, key: str, questions: list[str]) -> None:
        self._memory[key] = questions
        self._memory.move_to_end(key)
        while len(self._memory) > self.memory_entries:
            self._memory.popitem(last=False)
            self.counts["evicted"] += 1

    def memory_size(self) -> int:
        return len(self._memory)

    def _read(self, key: str) -> list[str] | None:
        try:
            return json.loads((self.directory / f"{key}.json").read_text())["questions"]
        except (OSError, ValueError, KeyError):  # absent, or a torn file: generate again
            return None

    def _write(self, key: str, record: dict) -> None:
        """Atomically: a reader sees the whole file or none."""
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomically(self.directory / f"{key}.json", json.dumps(record, indent=1))
