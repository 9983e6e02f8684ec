"""Pairwise judge: which of two responses follows the instruction better, asked in both orders.

LLM judges favour a position (CodeJudgeBench), so every pair is read as given and swapped.
P(first beats second) is the mean of the two readings when they agree; when they disagree
the verdict is a tie (0.5) and the pair counts as inconsistent. With K > 2 responses each
is compared with every other and its reward is its mean P(win): K(K-1) judge calls.
"""
from __future__ import annotations

import asyncio
import itertools
from typing import Sequence

from plaudit.rewardmodels.base import Comparison, InputError, Pair, combine

from .backends import BackendError
from .base import Judge, prompt_text, raise_if_all_failed, render
from plaudit.schemas import JudgeRequest, JudgeResponse, PairVerdict, Verdict

DEFAULT_QUESTION = "Which response follows the instruction better?"


class PairwiseJudge(Judge):
    method = "pairwise"
    relative = True  # /score: mean preference against the other responses to the prompt
    labels = ("A", "B")
    neutral_reward = 0.5

    async def _pair(self, instruction: str, first: str, second: str, criterion: str | None = None) -> PairVerdict:
        question = criterion or DEFAULT_QUESTION
        try:
            as_given, swapped = await self.settle(
                self.choose(render("pairwise", instruction=instruction, first=first, second=second, question=question)),
                self.choose(render("pairwise", instruction=instruction, first=second, second=first, question=question)))
        except BackendError as e:  # this pair only
            return PairVerdict(probability=None, orders=[None, None], consistent=None, error=self.backend_failed(e))
        verdict = combine(as_given, None if swapped is None else 1.0 - swapped)
        self.counts["pairs"] += 1
        self.counts["inconsistent"] += verdict.consistent is False
        return verdict

    async def judge(self, request: JudgeRequest) -> JudgeResponse:
        k = len(request.responses)
        if k < 2:
            raise InputError("responses", f"a pairwise judge compares two or more responses, got {k}")
        instruction = prompt_text(request.instruction)
        pairs = list(itertools.combinations(range(k), 2))
        verdicts = await asyncio.gather(*[self._pair(instruction, request.responses[i], request.responses[j])
                                          for i, j in pairs])
        wins: list[list[float]] = [[] for _ in range(k)]
        unread = [0] * k
        failed: list[str | None] = [None] * k
        for (i, j), v in zip(pairs, verdicts):
            for who, p in ((i, v.probability), (j, None if v.probability is None else 1.0 - v.probability)):
                if v.error is not None:
                    failed[who] = failed[who] or v.error
                elif p is None:
                    unread[who] += 1
                else:
                    wins[who].append(p)
        # A response with a failed comparison is flagged; its reward comes from the pairs that were read.
        results = [Verdict(reward=sum(w) / len(w) if w else None, unscored=u, error=e)
                   for w, u, e in zip(wins, unread, failed)]
        return JudgeResponse(judge=self.name, method=self.method, results=results,
                             comparison=verdicts[0] if k == 2 else None)

    def verdicts(self, pairs: Sequence[Pair]) -> list[PairVerdict]:
        """Each pair judged directly, in both orders (two calls to the judge, not four)."""
        return self.hub.run(_gather_pairs(self, pairs))

    def compare(self, pairs: Sequence[Pair]) -> Comparison:
        """Each pair judged directly, in both orders."""
        verdicts = self.verdicts(pairs)
        errors = [v.error for v in verdicts]
        raise_if_all_failed(errors)
        probabilities = [v.probability for v in verdicts]
        margins = [None if p is None else p - 0.5 for p in probabilities]
        return Comparison(probabilities, margins, [False] * len(pairs), errors=errors)


async def _gather_pairs(judge: PairwiseJudge, pairs: Sequence[Pair]) -> list[PairVerdict]:
    return await asyncio.gather(*[judge._pair(prompt_text(p.prompt), p.a, p.b, p.criterion) for p in pairs])
