"""TICK: a checklist of YES/NO questions generated from the instruction alone, answered per response.

Step 1 writes 2 to 8 questions, phrased so that YES means a requirement is met, once per
instruction (`ChecklistStore`). Step 2 asks every (response, question) concurrently;
with logprobs a question's score is P(YES)/(P(YES)+P(NO)). A response's reward is the
mean of its scored questions' P(YES) (the pass rate when the backend gives no logprobs);
STICK best-of-N ranks by pass rate, ties broken by that mean.
"""
from __future__ import annotations

import asyncio
import re
from typing import Any, Sequence

from plaudit.rewardmodels.base import Prompt, Ranking

from .backends import BackendError
from .base import Judge, prompt_text, render
from plaudit.schemas import Answer, JudgeRequest, JudgeResponse, Verdict
from .checklists import MEMORY_ENTRIES, ChecklistStore

MIN_QUESTIONS, MAX_QUESTIONS = 2, 8
_BULLET = re.compile(r"^\s*(?:[-*•]|\(?\d+[.):]|Q\d+[.:])?\s*")


def parse_checklist(text: str) -> list[str] | None:
    """The questions of a generated checklist: lines ending in '?', bullets and numbers removed,
    duplicates dropped, at most 8; None when fewer than 2."""
    questions: list[str] = []
    for line in text.splitlines():
        question = _BULLET.sub("", line).strip()
        if question.endswith("?") and len(question) > 3 and question not in questions:
            questions.append(question)
    return questions[:MAX_QUESTIONS] if len(questions) >= MIN_QUESTIONS else None


class TickJudge(Judge):
    method = "tick"
    neutral_reward = 0.5

    def __init__(self, name: str, hub, backend: str, *, checklist_dir: str | None = None,
                 checklist_memory: int = MEMORY_ENTRIES, **options: Any):
        super().__init__(name, hub, backend, **options)
        self.store = ChecklistStore(checklist_dir, checklist_memory)
        self.metadata["checklist_dir"] = str(self.store.directory)

    async def _generate(self, instruction: str) -> list[str] | None:
        return await self.ask(render("tick_checklist", instruction=instruction), lambda c: parse_checklist(c.text),
                              answer=False)

    async def judge(self, request: JudgeRequest) -> JudgeResponse:
        instruction = prompt_text(request.instruction)
        if request.checklist:
            questions, source = request.checklist, "caller"
        else:
            try:
                questions, source = await self.store.get(self.metadata["judge_model"], instruction,
                                                         lambda: self._generate(instruction))
            except BackendError as e:  # no checklist, so no response can be judged
                error = self.backend_failed(e)
                return JudgeResponse(judge=self.name, method=self.method, checklist=[], checklist_source=None,
                                     results=[Verdict(reward=None, error=error) for _ in request.responses])
        if questions is None:  # no usable checklist: every response unscored, none failed
            self.counts["checklist_failures"] += 1
            return JudgeResponse(judge=self.name, method=self.method, checklist=[], checklist_source=source,
                                 results=[Verdict(reward=None, unscored=0) for _ in request.responses])
        results = await asyncio.gather(*[self._answer_all(instruction, r, questions) for r in request.responses])
        return JudgeResponse(judge=self.name, method=self.method, checklist=questions, checklist_source=source,
                             results=results)

    async def _answer_all(self, instruction: str, response: str, questions: list[str]) -> Verdict:
        """One response's questions, asked concurrently; a backend failure fails this response only."""
        try:
            p_yes = await self.settle(*[self.choose(render("tick_answer", instruction=instruction, response=response,
                                                           question=q)) for q in questions])
        except BackendError as e:
            return Verdict(reward=None, error=self.backend_failed(e))
        return self._verdict(questions, p_yes)

    @staticmethod
    def _verdict(questions: list[str], p_yes: Sequence[float | None]) -> Verdict:
        answers = [Answer(question=q, answer=None if p is None else "YES" if p >= 0.5 else "NO", p_yes=p)
                   for q, p in zip(questions, p_yes)]
        scored = [p for p in p_yes if p is not None]
        if not scored:
            return Verdict(reward=None, unscored=len(questions), answers=answers)
        mean = sum(scored) / len(scored)
        return Verdict(reward=mean, unscored=len(questions) - len(scored), answers=answers, mean_p_yes=mean,
                       pass_rate=sum(p >= 0.5 for p in scored) / len(scored))

    def rank(self, prompt: Prompt, responses: Sequence[str], reference: Any = None) -> Ranking:
        """STICK best-of-N: by pass rate, then by mean P(YES); unscored responses last. The
        matrix says 1 where i ranks above j, 0.5 for a tie."""
        verdicts = self.run(JudgeRequest(judge=self.name, instruction=prompt, responses=list(responses))).results
        keys = [None if v.pass_rate is None else (v.pass_rate, v.mean_p_yes) for v in verdicts]
        order = sorted(range(len(keys)), key=lambda i: (keys[i] is None, [-x for x in keys[i] or (0, 0)]))
        matrix = [[None if a is None or b is None else 0.5 if a == b else float(a > b) for b in keys] for a in keys]
        return Ranking([v.reward for v in verdicts], order, [False] * len(responses), matrix)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "checklists": dict(self.store.counts)}
