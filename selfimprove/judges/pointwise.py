"""Pointwise judge with an additive rubric: expected points from Yes/No probabilities."""

from __future__ import annotations

import asyncio

from selfimprove.backends.base import Backend
from selfimprove.constitution import RubricItem
from selfimprove.errors import ParseError
from selfimprove.judges.base import parse_choice, two_way_probability
from selfimprove.prompts import user
from selfimprove.types import SamplingParams

YES_NO = ("Yes", "No")


class PointwiseJudge:
    """Score a response as the sum over rubric items of ``points × P(criterion met)``.

    Without log-probabilities each item is a generated Yes/No; an unparseable item after
    ``max_attempts`` makes the whole score ``None`` (abstain).
    """

    def __init__(
        self,
        backend: Backend,
        rubric: list[RubricItem],
        *,
        use_logprobs: bool = True,
        max_attempts: int = 2,
        sampling: SamplingParams | None = None,
    ) -> None:
        if not rubric:
            raise ValueError("a pointwise rubric needs at least one item")
        self.backend = backend
        self.rubric = rubric
        self.use_logprobs = use_logprobs
        self.max_attempts = max_attempts
        self.sampling = sampling or SamplingParams(max_new_tokens=8)

    @property
    def max_score(self) -> int:
        return sum(item.points for item in self.rubric)

    async def score(self, prompt: str, response: str) -> float | None:
        convs = [
            user("judge_pointwise", prompt=prompt, response=response, criterion=item.criterion)
            for item in self.rubric
        ]
        probs: list[float] | None = None
        if self.use_logprobs and self.backend.supports_logprobs:
            try:
                lps = await self.backend.option_logprobs(convs, YES_NO)
                probs = [two_way_probability(lp, *YES_NO) for lp in lps]
            except NotImplementedError:
                pass  # the server turned out not to give log-probabilities: fall back
        if probs is None:
            found = await asyncio.gather(*(self._generated(c) for c in convs))
            if any(p is None for p in found):
                return None
            probs = [p for p in found if p is not None]
        return sum(item.points * p for item, p in zip(self.rubric, probs, strict=True))

    async def _generated(self, conv) -> float | None:
        for attempt in range(self.max_attempts):
            # Later attempts sample, so a retry can produce a different answer.
            params = self.sampling.model_copy(update={
                "temperature": 0.7 if attempt else self.sampling.temperature,
                "seed": (self.sampling.seed or 0) + attempt, "n": 1,
            })
            ((completion,),) = await self.backend.generate([conv], params)
            try:
                return 1.0 if parse_choice(completion.text, YES_NO).choice == "Yes" else 0.0
            except ParseError:
                continue
        return None
