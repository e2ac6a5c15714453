"""Position-swapped pairwise judge: soft labels from option log-probs, generated fallback."""

from __future__ import annotations

import asyncio
import logging

from tenacity import AsyncRetrying, RetryError, retry_if_exception_type, stop_after_attempt

from selfimprove.backends.base import Backend
from selfimprove.errors import ParseError
from selfimprove.judges.base import parse_choice, two_way_probability
from selfimprove.prompts import user
from selfimprove.types import OrderJudgment, SamplingParams, Verdict

log = logging.getLogger(__name__)
OPTIONS = ("A", "B")
DEFAULT_RUBRIC = "Compare two responses to the same question."


class PairwiseJudge:
    """Judge response ``a`` against ``b`` in both orders; a verdict that flips is a tie.

    When exactly one response passes the hard checks, the checks decide without asking the
    judge, unless ``judge_when_checks_decide`` (then the soft label is recorded as well).
    With a backend that gives log-probabilities the soft label is P(option token); otherwise
    the judge writes a verdict that is parsed, retried up to ``max_attempts`` times, and on
    failure the judgment is an explicit abstain, never a silent default.
    """

    def __init__(
        self,
        backend: Backend,
        rubric: str = DEFAULT_RUBRIC,
        *,
        use_logprobs: bool = True,
        max_attempts: int = 3,
        sampling: SamplingParams | None = None,
        judge_when_checks_decide: bool = False,
    ) -> None:
        self.backend = backend
        self.judge_when_checks_decide = judge_when_checks_decide
        self.rubric = rubric
        self.use_logprobs = use_logprobs
        self.max_attempts = max_attempts
        self.sampling = sampling or SamplingParams(max_new_tokens=16)

    async def compare(
        self,
        prompt: str,
        a: str,
        b: str,
        *,
        a_passes: bool = True,
        b_passes: bool = True,
        labels: tuple[str, str] = ("a", "b"),
    ) -> Verdict:
        if a_passes != b_passes and not self.judge_when_checks_decide:
            # The checks decide; the judge's answer would be ignored, so it is not asked
            # (scoring two orders is the most expensive call of the loop).
            return checks_verdict(a_passes=a_passes, b_passes=b_passes)
        ab, ba = await asyncio.gather(
            self._judge_order(prompt, a, b, labels[0]), self._judge_order(prompt, b, a, labels[1])
        )
        return combine(ab, ba, a_passes=a_passes, b_passes=b_passes)

    async def _judge_order(self, prompt: str, first: str, second: str, label: str):
        conv = user("judge_pairwise", rubric=self.rubric, prompt=prompt, first=first, second=second)
        if self.use_logprobs and self.backend.supports_logprobs:
            try:
                (lp,) = await self.backend.option_logprobs([conv], OPTIONS)
            except NotImplementedError:
                pass  # the server turned out not to give log-probabilities: fall back
            else:
                p = two_way_probability(lp, *OPTIONS)
                choice = "first" if p > 0.5 else "second" if p < 0.5 else "abstain"
                return OrderJudgment(first=label, p_first=p, choice=choice, method="logprob")
        return await self._generated(conv, label)

    async def _generated(self, conv, label: str) -> OrderJudgment:
        attempt_no = 0
        raw = ""
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.max_attempts),
                retry=retry_if_exception_type(ParseError),
            ):
                with attempt:
                    # Later attempts sample, so a retry can produce a different answer.
                    params = self.sampling.model_copy(
                        update={"temperature": 0.7 if attempt_no else self.sampling.temperature,
                                "seed": (self.sampling.seed or 0) + attempt_no, "n": 1}
                    )
                    attempt_no += 1
                    ((completion,),) = await self.backend.generate([conv], params)
                    raw = completion.text
                    parsed = parse_choice(raw, OPTIONS)
        except RetryError:
            log.info("judge abstained after %d unparseable verdicts", attempt_no)
            return OrderJudgment(first=label, choice="abstain", method="abstain", raw=raw)
        choice = "first" if parsed.choice == OPTIONS[0] else "second"
        p = 1.0 if choice == "first" else 0.0
        return OrderJudgment(first=label, p_first=p, choice=choice, method="generated", raw=raw)


def combine(ab: OrderJudgment, ba: OrderJudgment, *, a_passes: bool, b_passes: bool) -> Verdict:
    """Merge the two orders into one verdict; executable checks dominate the judge."""
    orders = [ab, ba]
    p_b = None
    if ab.p_first is not None and ba.p_first is not None:
        p_b = ((1 - ab.p_first) + ba.p_first) / 2
    common = {"orders": orders, "a_passes_checks": a_passes, "b_passes_checks": b_passes}
    if a_passes != b_passes:
        return Verdict(winner="a" if a_passes else "b", p_b=p_b, decided_by="checks", **common)
    if "abstain" in (ab.choice, ba.choice):
        return Verdict(winner="abstain", p_b=p_b, decided_by="abstain", **common)
    b_wins_ab = ab.choice == "second"
    b_wins_ba = ba.choice == "first"
    if b_wins_ab != b_wins_ba:
        return Verdict(winner="tie", p_b=p_b, decided_by="flip", **common)
    return Verdict(winner="b" if b_wins_ab else "a", p_b=p_b, decided_by="judge", **common)


def checks_verdict(*, a_passes: bool, b_passes: bool) -> Verdict:
    """The verdict when exactly one response passes the hard checks; no judge is consulted."""
    if a_passes == b_passes:
        raise ValueError("the checks decide only when exactly one response passes")
    return Verdict(winner="a" if a_passes else "b", decided_by="checks",
                   a_passes_checks=a_passes, b_passes_checks=b_passes)
