"""The evaluation gate: a candidate policy is promoted only if it beats the incumbent safely.

Both policies answer the same held-out prompts (greedy by default). The gate then compares them
on four guards, each optional:

- **win rate** of the candidate against the incumbent under the position-swapped pairwise judge
  (ties count half, abstains are left out), with a 95% Wilson interval;
- **violation rate** of the constitution's hard checks must not rise;
- **length ratio** (mean words, candidate / incumbent) catches "longer looks better" drift;
- **retention**: the relative increase of the mean per-token NLL on a small fixed set of
  general text (``data/retention.txt``) catches forgetting; measured when the backend has
  ``sequence_nll``.

The judge runs with the base policy (v0) by default, so the yardstick does not move when the
candidate changes.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable, Sequence
from functools import cache
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from selfimprove.backends.base import Backend
from selfimprove.checks import count_words, passes, run_checks
from selfimprove.constitution import Constitution
from selfimprove.judges.pairwise import PairwiseJudge
from selfimprove.types import Message, PolicyRef, SamplingParams, Verdict

__all__ = [
    "EvalResult",
    "GateConfig",
    "PolicyEval",
    "VerdictCounts",
    "count_verdicts",
    "decide",
    "evaluate_policy",
    "gate",
    "length_ratio",
    "retention_increase",
    "retention_texts",
    "violation_delta",
    "wilson_interval",
    "win_rate",
]

log = logging.getLogger(__name__)

# Float noise must not turn "equal" into "worse" for a threshold of exactly 0.
_EPS = 1e-9


class GateConfig(BaseModel):
    """Thresholds of the gate; a threshold set to ``None`` is not checked."""

    model_config = ConfigDict(extra="forbid")
    min_win_rate: float | None = Field(
        default=0.4, ge=0.0, le=1.0, description="candidate vs incumbent, ties count half"
    )
    max_violation_rate_delta: float | None = Field(
        default=0.0, description="candidate violation rate minus the incumbent's, at most"
    )
    max_length_ratio: float | None = Field(
        default=1.25, gt=0.0, description="mean words, candidate / incumbent, at most"
    )
    max_retention_increase: float | None = Field(
        default=0.05, description="relative increase of the retention NLL, at most"
    )
    num_prompts: int = Field(default=32, ge=1, description="held-out prompts per evaluation")
    sampling: SamplingParams = Field(
        default_factory=lambda: SamplingParams(max_new_tokens=128, temperature=0.0),
        description="sampling for the evaluation generations (greedy by default)",
    )
    judge_version: Literal["base", "incumbent"] = Field(
        default="base", description="which policy judges when the judge shares the backend"
    )


class PolicyEval(BaseModel):
    """One policy's answers to the held-out prompts and what they measure."""

    version: str
    violation_rate: float = Field(description="share of responses failing a hard check")
    mean_words: float
    retention_nll: float | None = Field(
        default=None, description="mean per-token NLL on the retention texts; None if unmeasured"
    )
    n_prompts: int
    prompts: list[str] = Field(default_factory=list)
    responses: list[str] = Field(default_factory=list)
    passes_checks: list[bool] = Field(default_factory=list)


class VerdictCounts(BaseModel):
    """Outcomes of the pairwise judgments, from the candidate's side."""

    wins: int = 0
    ties: int = 0
    losses: int = 0
    abstains: int = 0

    @property
    def decisive(self) -> int:
        """Judgments that count towards the win rate (abstains do not)."""
        return self.wins + self.ties + self.losses

    @property
    def win_rate(self) -> float | None:
        n = self.decisive
        return None if n == 0 else (self.wins + 0.5 * self.ties) / n


class EvalResult(BaseModel):
    """The gate's measurements and decision for one candidate."""

    candidate: PolicyEval
    incumbent: PolicyEval
    win_rate: float | None = Field(description="None when every judgment abstained")
    win_rate_ci: tuple[float, float] = Field(description="95% Wilson interval (low, high)")
    wins: int
    ties: int
    losses: int
    abstains: int
    length_ratio: float | None
    retention_increase: float | None
    passed: bool
    reasons: list[str] = Field(default_factory=list, description="every threshold that failed")
    unchecked: list[str] = Field(
        default_factory=list, description="configured thresholds that could not be measured"
    )
    thresholds: dict[str, Any] = Field(default_factory=dict)
    verdicts: list[Verdict] = Field(default_factory=list, description="a = incumbent, b = cand.")


# ---- pure helpers ----------------------------------------------------------------------


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion; ``successes`` may be fractional (half ties).

    With ``n == 0`` nothing is known and the interval is ``(0, 1)``.
    """
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be within [0, n={n}], got {successes}")
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


def count_verdicts(
    verdicts: Iterable[Verdict], candidate: Literal["a", "b"] = "b"
) -> VerdictCounts:
    """Count wins, ties, losses and abstains for ``candidate``'s side of each verdict."""
    counts = VerdictCounts()
    for v in verdicts:
        if v.winner == "abstain":
            counts.abstains += 1
        elif v.winner == "tie":
            counts.ties += 1
        elif v.winner == candidate:
            counts.wins += 1
        else:
            counts.losses += 1
    return counts


def win_rate(verdicts: Iterable[Verdict], candidate: Literal["a", "b"] = "b") -> float | None:
    """Share of decisive judgments the candidate won, ties counting half; None if none."""
    return count_verdicts(verdicts, candidate).win_rate


def violation_delta(cand: PolicyEval, inc: PolicyEval) -> float:
    return cand.violation_rate - inc.violation_rate


def length_ratio(cand: PolicyEval, inc: PolicyEval) -> float | None:
    """Mean words candidate / incumbent; None when the incumbent said nothing at all."""
    if inc.mean_words == 0:
        return 1.0 if cand.mean_words == 0 else None
    return cand.mean_words / inc.mean_words


def retention_increase(cand: PolicyEval, inc: PolicyEval) -> float | None:
    """Relative change of the retention NLL; None when either side was not measured."""
    if cand.retention_nll is None or inc.retention_nll is None or inc.retention_nll <= 0:
        return None
    return (cand.retention_nll - inc.retention_nll) / inc.retention_nll


def decide(
    cand: PolicyEval, inc: PolicyEval, counts: VerdictCounts, cfg: GateConfig
) -> tuple[bool, list[str]]:
    """Check every configured threshold; return (passed, reasons for each failure)."""
    reasons, _ = _judge_thresholds(cand, inc, counts, cfg)
    return not reasons, reasons


def _judge_thresholds(
    cand: PolicyEval, inc: PolicyEval, counts: VerdictCounts, cfg: GateConfig
) -> tuple[list[str], list[str]]:
    """(reasons for failed thresholds, thresholds that could not be measured)."""
    reasons: list[str] = []
    unchecked: list[str] = []
    if cfg.min_win_rate is not None:
        rate = counts.win_rate
        if rate is None:
            reasons.append(f"win rate unknown: all {counts.abstains} judgments abstained")
        elif rate < cfg.min_win_rate - _EPS:
            reasons.append(f"win rate {rate:.2f} < {cfg.min_win_rate:.2f}")
    if cfg.max_violation_rate_delta is not None:
        delta = violation_delta(cand, inc)
        if delta > cfg.max_violation_rate_delta + _EPS:
            reasons.append(
                f"violation rate {inc.violation_rate:.2f} -> {cand.violation_rate:.2f} "
                f"(delta {delta:+.2f} > {cfg.max_violation_rate_delta:+.2f})"
            )
    if cfg.max_length_ratio is not None:
        ratio = length_ratio(cand, inc)
        if ratio is None:
            reasons.append(
                f"length ratio undefined: incumbent mean 0 words, candidate {cand.mean_words:.1f}"
            )
        elif ratio > cfg.max_length_ratio + _EPS:
            reasons.append(
                f"length ratio {ratio:.2f} > {cfg.max_length_ratio:.2f} "
                f"({inc.mean_words:.1f} -> {cand.mean_words:.1f} words)"
            )
    if cfg.max_retention_increase is not None:
        increase = retention_increase(cand, inc)
        if increase is None:
            unchecked.append("retention not measured (the backend has no sequence_nll)")
        elif increase > cfg.max_retention_increase + _EPS:
            reasons.append(
                f"retention NLL increase {increase:+.1%} > {cfg.max_retention_increase:+.1%} "
                f"({inc.retention_nll:.3f} -> {cand.retention_nll:.3f})"
            )
    return reasons, unchecked


# ---- measuring policies ----------------------------------------------------------------


@cache
def retention_texts() -> tuple[str, ...]:
    """The fixed general-text paragraphs shipped with the package (one per line)."""
    raw = resources.files("selfimprove").joinpath("data/retention.txt").read_text("utf-8")
    return tuple(line.strip() for line in raw.splitlines() if line.strip())


async def evaluate_policy(
    backend: Backend,
    policy: PolicyRef,
    prompts: Sequence[str],
    constitution: Constitution,
    sampling: SamplingParams,
    *,
    retention: Sequence[str] | None = None,
) -> PolicyEval:
    """Serve ``policy``, answer every prompt in one batch, run the checks, measure retention.

    ``retention`` defaults to :func:`retention_texts`; an empty sequence skips retention.
    """
    await backend.load_policy(policy)
    convs = [[Message(role="user", content=p)] for p in prompts]
    params = sampling.model_copy(update={"n": 1})
    outputs = await backend.generate(convs, params) if convs else []
    responses = [out[0].text for out in outputs]
    ok = [passes(run_checks(constitution, r)) for r in responses]
    n = len(responses)
    texts = retention_texts() if retention is None else tuple(retention)
    nll: float | None = None
    sequence_nll = getattr(backend, "sequence_nll", None)
    if texts and callable(sequence_nll):
        values = await sequence_nll(list(texts))
        nll = sum(values) / len(values)
    return PolicyEval(
        version=policy.version,
        violation_rate=(n - sum(ok)) / n if n else 0.0,
        mean_words=sum(count_words(r) for r in responses) / n if n else 0.0,
        retention_nll=nll,
        n_prompts=n,
        prompts=list(prompts),
        responses=responses,
        passes_checks=ok,
    )


def _reusable(given: PolicyEval, policy: PolicyRef, prompts: Sequence[str]) -> None:
    if given.version != policy.version:
        raise ValueError(
            f"incumbent_eval is for {given.version}, but the incumbent is {policy.version}"
        )
    if given.prompts != list(prompts):
        raise ValueError(
            f"incumbent_eval of {given.version} was made on other prompts than this evaluation"
        )


async def gate(
    backend: Backend,
    candidate: PolicyRef,
    incumbent: PolicyRef,
    prompts: list[str],
    constitution: Constitution,
    cfg: GateConfig,
    *,
    judge_backend: Backend | None = None,
    base: PolicyRef | None = None,
    incumbent_eval: PolicyEval | None = None,
    retention: Sequence[str] | None = None,
) -> EvalResult:
    """Evaluate ``candidate`` against ``incumbent`` and decide whether to promote it.

    ``incumbent_eval`` (same version, same prompts) is reused instead of generating again;
    ``retention`` overrides the retention texts (see :func:`evaluate_policy`).
    When the judge shares ``backend``, it is served ``base`` (v0; the bare base model if not
    given) or the incumbent, per ``cfg.judge_version``. The backend serves the policy it served
    before the call when this returns or raises.
    """
    previous = backend.policy
    judge_on = judge_backend or backend
    try:
        if incumbent_eval is not None:
            _reusable(incumbent_eval, incumbent, prompts)
            inc = incumbent_eval
        else:
            inc = await evaluate_policy(
                backend, incumbent, prompts, constitution, cfg.sampling, retention=retention
            )
        cand = await evaluate_policy(
            backend, candidate, prompts, constitution, cfg.sampling, retention=retention
        )
        if judge_on is backend:
            if cfg.judge_version == "base":
                judge_policy = base or PolicyRef(version="v0", base_model=incumbent.base_model)
            else:
                judge_policy = incumbent
            await backend.load_policy(judge_policy)
        judge = PairwiseJudge(judge_on, constitution.judge.pairwise)
        verdicts = list(
            await asyncio.gather(
                *(
                    judge.compare(p, a, b, a_passes=pa, b_passes=pb)
                    for p, a, b, pa, pb in zip(
                        prompts, inc.responses, cand.responses, inc.passes_checks,
                        cand.passes_checks, strict=True,
                    )
                )
            )
        )
    finally:
        if previous is not None and backend.policy != previous:
            await backend.load_policy(previous)
    counts = count_verdicts(verdicts, candidate="b")
    reasons, unchecked = _judge_thresholds(cand, inc, counts, cfg)
    rate = counts.win_rate
    result = EvalResult(
        candidate=cand,
        incumbent=inc,
        win_rate=rate,
        win_rate_ci=wilson_interval(counts.wins + 0.5 * counts.ties, counts.decisive),
        **counts.model_dump(),
        length_ratio=length_ratio(cand, inc),
        retention_increase=retention_increase(cand, inc),
        passed=not reasons,
        reasons=reasons,
        unchecked=unchecked,
        thresholds=cfg.model_dump(mode="json"),
        verdicts=verdicts,
    )
    log.info(
        "gate %s vs %s: win rate %s, %s", candidate.version, incumbent.version,
        "n/a" if rate is None else f"{rate:.2f}", "passed" if result.passed else "; ".join(reasons),
    )
    return result
