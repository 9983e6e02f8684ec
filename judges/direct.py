"""Direct-score judge: the LLM rates each response from 1 to 10 on its own.

The baseline that TICK is measured against (TICK's paper: checklists raise agreement with
people over direct scoring). The rating is the first integer of the answer; an answer
without one in 1..10 is retried, then unscored.
"""
from __future__ import annotations

import asyncio
import re

from .backends import BackendError
from .base import Judge, prompt_text, render
from plaudit.schemas import JudgeRequest, JudgeResponse, Verdict

LOW, HIGH = 1, 10


def parse_rating(text: str) -> int | None:
    match = re.search(r"\d+", text)
    value = int(match.group(0)) if match else None
    return value if value is not None and LOW <= value <= HIGH else None


class DirectJudge(Judge):
    method = "direct"
    neutral_reward = (LOW + HIGH) / 2

    def p_good(self, reward: float | None) -> float | None:
        return None if reward is None else (reward - LOW) / (HIGH - LOW)

    async def _rate(self, instruction: str, response: str) -> Verdict:
        try:
            rating = await self.ask(render("direct", instruction=instruction, response=response),
                                    lambda c: parse_rating(c.text), max_tokens=4)
        except BackendError as e:  # this response only
            return Verdict(reward=None, error=self.backend_failed(e))
        return Verdict(reward=rating, rating=rating, unscored=int(rating is None))

    async def judge(self, request: JudgeRequest) -> JudgeResponse:
        instruction = prompt_text(request.instruction)
        results = await asyncio.gather(*[self._rate(instruction, r) for r in request.responses])
        return JudgeResponse(judge=self.name, method=self.method, results=results)
