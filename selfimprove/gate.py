"""The gate: a candidate policy is promoted only if it beats the incumbent safely.

Both policies answer the same held-out prompts (greedy by default). The gate then compares them
on these guards, each optional:

- **win rate** of the candidate against the incumbent under the position-swapped pairwise judge
  (ties count half, abstains are left out), with a 95% Wilson interval;
- **violation rate** of the constitution's hard checks must not rise;
- **length ratio** (mean words, candidate / incumbent) catches "longer looks better" drift;
- **retention**: the relative increase of the mean per-token NLL on a small fixed set of
  general text (``data/retention.txt``) catches forgetting; measured when the backend has
  ``sequence_nll``;
- **kinds**: no check kind's pass rate may fall more than a tolerance below the incumbent's
  or the base's, beyond chance (one instruction bought with another is not better);
- **degeneration**: repetition, truncation (hit the token cap without ending) and near-empty
  rates must not rise beyond a tolerance over the better of the incumbent and the base (v0),
  and mean length must stay above a floor. A loop whose checks reward saying less would
  otherwise promote a model that says nothing, or says one sentence seven times.

The judge runs with the base policy (v0) by default, so the yardstick does not move when the
candidate changes.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from selfimprove.backends.base import Backend
from selfimprove.backends.served import serve
from selfimprove.config import GateConfig
from selfimprove.constitution import Constitution
from selfimprove.evaluation import PolicyEval, evaluate_policy
from selfimprove.judges.diagnostics import JudgeDiagnostics, diagnose
from selfimprove.judges.pairwise import PairwiseJudge
from selfimprove.paired import kind_pairs, paired_passes
from selfimprove.sources import PromptRecord
from selfimprove.types import PolicyRef, Verdict

__all__ = [
    "GateResult",
    "VerdictCounts",
    "count_verdicts",
    "degeneration_reasons",
    "gate",
    "kind_drop_reasons",
    "length_ratio",
    "retention_increase",
    "thresholds_passed",
    "violation_delta",
    "wilson_interval",
    "win_rate",
]

log = logging.getLogger(__name__)

# Float noise must not turn "equal" into "worse" for a threshold of exactly 0.
_EPS = 1e-9


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


class GateResult(BaseModel):
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
    judge: JudgeDiagnostics | None = Field(default=None, description="the judge's reliability")


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


def thresholds_passed(
    cand: PolicyEval, inc: PolicyEval, counts: VerdictCounts, cfg: GateConfig,
    baseline: PolicyEval | None = None, judge: JudgeDiagnostics | None = None,
) -> tuple[bool, list[str]]:
    """Check every configured threshold; return (passed, reasons for each failure). With
    ``judge`` (the verdicts' diagnostics) the improvement rule is checked too."""
    reasons, _ = _failed_thresholds(cand, inc, counts, cfg, baseline)
    if judge is not None and cfg.require_improvement:
        reasons += improvement_reasons(cand, inc, _interval(counts), judge,
                                       cfg.max_p_value)
    return not reasons, reasons


def _interval(counts: VerdictCounts) -> tuple[float, float]:
    """The win rate's 95% interval, ties counting half."""
    return wilson_interval(counts.wins + 0.5 * counts.ties, counts.decisive)


def _failed_thresholds(
    cand: PolicyEval, inc: PolicyEval, counts: VerdictCounts, cfg: GateConfig,
    baseline: PolicyEval | None = None,
) -> tuple[list[str], list[str]]:
    """(reasons for failed thresholds, thresholds that could not be measured)."""
    reasons: list[str] = []
    unchecked: list[str] = []
    reasons += degeneration_reasons(cand, [inc, baseline], cfg)
    reasons += kind_drop_reasons(cand, [inc, baseline], cfg)
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
    if cfg.min_length_ratio is not None:
        ratio = length_ratio(cand, inc)
        if ratio is not None and ratio < cfg.min_length_ratio - _EPS:
            reasons.append(
                f"length ratio {ratio:.2f} < {cfg.min_length_ratio:.2f} "
                f"({inc.mean_words:.1f} -> {cand.mean_words:.1f} words)"
            )
    if cfg.max_retention_increase is not None:
        # Against the lower of the incumbent's and the base's NLL, as the degeneration guards:
        # promotions that each stay within the tolerance must not add up past it.
        ref = min((r for r in (inc, baseline) if r is not None and r.retention_nll is not None),
                  key=lambda r: r.retention_nll or 0.0, default=inc)
        increase = retention_increase(cand, ref)
        if increase is None:
            unchecked.append("retention not measured (the backend has no sequence_nll)")
        elif increase > cfg.max_retention_increase + _EPS:
            against = "" if ref is inc else f" against the base {ref.version}"
            reasons.append(
                f"retention NLL increase {increase:+.1%} > {cfg.max_retention_increase:+.1%}"
                f"{against} ({ref.retention_nll:.3f} -> {cand.retention_nll:.3f})"
            )
    return reasons, unchecked


def improvement_reasons(cand: PolicyEval, inc: PolicyEval, ci: tuple[float, float],
                        diagnostics: JudgeDiagnostics,
                        max_p_value: float | None = None) -> list[str]:
    """Why there is no evidence that ``cand`` is better (empty: there is): neither fewer
    violations nor a judge, reliable enough to count, whose win-rate interval is above 0.5.
    With ``max_p_value``, fewer violations count only where the prompts the candidate passes
    and the incumbent does not outnumber the reverse beyond chance (exact McNemar test)."""
    chance = ""
    if cand.violation_rate < inc.violation_rate - _EPS:
        if max_p_value is None:
            return []
        try:
            paired = paired_passes(inc, cand)
        except ValueError as exc:
            chance = f" ({exc})"
        else:
            if paired.p_value <= max_p_value + _EPS:
                return []
            chance = f" (within chance: {paired.split()} > {max_p_value:g})"
    if not diagnostics.near_chance and diagnostics.decisive and ci[0] > 0.5:
        return []
    if not diagnostics.judged:
        judge = "no pair was left to the judge"
    elif diagnostics.near_chance or not diagnostics.decisive:
        judge = "the judge is near chance"
    else:
        judge = f"the judge's win-rate interval {ci[0]:.2f}-{ci[1]:.2f} is not above 0.5"
    return [f"no measured improvement: violations {inc.violation_rate:.2f} -> "
            f"{cand.violation_rate:.2f}{chance} and {judge}"]


def degeneration_reasons(
    cand: PolicyEval, references: Sequence[PolicyEval | None], cfg: GateConfig
) -> list[str]:
    """Why ``cand`` degenerates compared with the best of ``references`` (none: it does not).

    Each rate may rise by at most its tolerance over the lowest rate among the references, so
    small rises cannot pile up cycle after cycle; the length floor is absolute.
    """
    reasons: list[str] = []
    refs = [r.degeneration for r in references if r is not None and r.degeneration is not None]
    stats = cand.degeneration
    if stats is None:
        return reasons
    guards = [
        ("repetition", "repetition_rate", cfg.max_repetition_increase),
        ("truncation", "truncation_rate", cfg.max_truncation_increase),
        ("near-empty", "near_empty_rate", cfg.max_near_empty_increase),
    ]
    for name, field, tolerance in guards:
        value = getattr(stats, field)
        known = [getattr(r, field) for r in refs if getattr(r, field) is not None]
        if tolerance is None or value is None or not known:
            continue
        best = min(known)
        if value > best + tolerance + _EPS:
            reasons.append(
                f"{name} rate {value:.2f} > {best:.2f} + {tolerance:.2f} (degeneration guard)"
            )
    if cfg.min_mean_words is not None and stats.n and stats.mean_words < cfg.min_mean_words:
        reasons.append(
            f"mean length {stats.mean_words:.1f} words < floor {cfg.min_mean_words:g}"
        )
    return reasons


def kind_drop_reasons(
    cand: PolicyEval, references: Sequence[PolicyEval | None], cfg: GateConfig
) -> list[str]:
    """Check kinds whose pass rate fell more than ``cfg.max_kind_drop`` below a reference's
    (the incumbent's or the base's), beyond chance. The overall violation rate can stay level
    while one instruction is given up for another (on the instructions job DPO took
    ``ends_with`` from 5 of 16 held-out answers to 1 while other kinds rose).

    Prompt by prompt where both evaluations kept ``kind_results``: a kind fails when its
    answers lost outnumber those gained by more than the tolerance and the exact McNemar
    p-value is at most ``cfg.kind_drop_p_value`` (a kind on 10 answers moves 0.3 when three
    answers flip, which chance does often). Older records are compared by their rates alone.
    Kinds run on fewer than ``cfg.min_kind_responses`` answers are left out."""
    if cfg.max_kind_drop is None:
        return []
    reasons: dict[str, str] = {}
    for ref in (r for r in references if r is not None):
        pairs = kind_pairs(ref, cand)
        if pairs is None:
            for kind, why in _kind_rate_drops(cand, ref, cfg).items():
                reasons.setdefault(kind, why)
            continue
        for kind, pair in pairs.items():
            if pair.answers < cfg.min_kind_responses or pair.drop <= cfg.max_kind_drop + _EPS:
                continue
            limit = cfg.kind_drop_p_value
            if limit is not None and pair.p_value > limit + _EPS:
                continue
            reasons.setdefault(kind, (
                f"{kind} pass rate fell {pair.drop:.2f} > {cfg.max_kind_drop:.2f} from "
                f"{ref.version} (lost {pair.lost}, gained {pair.gained} of {pair.answers} "
                f"answers; McNemar p = {pair.p_value:.2g})"))
    return list(reasons.values())


def _kind_rate_drops(cand: PolicyEval, ref: PolicyEval, cfg: GateConfig) -> dict[str, str]:
    """The rate rule, for evaluations that cannot be paired."""
    assert cfg.max_kind_drop is not None
    out = {}
    for kind, rate in cand.kind_pass_rates.items():
        if (min(cand.kind_counts.get(kind, 0), ref.kind_counts.get(kind, 0))
                < cfg.min_kind_responses or kind not in ref.kind_pass_rates):
            continue
        was = ref.kind_pass_rates[kind]
        if rate < was - cfg.max_kind_drop - _EPS:
            out[kind] = (f"{kind} pass rate {rate:.2f} < {was:.2f} - {cfg.max_kind_drop:.2f} "
                         f"(on {cand.kind_counts[kind]} answers)")
    return out


# ---- measuring policies ----------------------------------------------------------------


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
    prompts: Sequence[str | PromptRecord],
    constitution: Constitution,
    cfg: GateConfig,
    *,
    judge: PairwiseJudge | None = None,
    incumbent_eval: PolicyEval | None = None,
    baseline_eval: PolicyEval | None = None,
    retention: Sequence[str] | None = None,
) -> GateResult:
    """Evaluate ``candidate`` against ``incumbent`` on ``backend`` and decide on promotion.

    ``judge`` compares the answers (default: the constitution's pairwise judge on the bare
    base model of ``backend``, so the yardstick does not move with the candidate);
    ``incumbent_eval`` (same version, same prompts) is reused instead of generating again;
    ``baseline_eval`` (v0's) tightens the degeneration guards; ``retention`` overrides the
    retention texts (see :func:`evaluate_policy`).
    """
    texts = [p.prompt if isinstance(p, PromptRecord) else p for p in prompts]
    if incumbent_eval is not None:
        _reusable(incumbent_eval, incumbent, texts)
        inc = incumbent_eval
    else:
        inc = await evaluate_policy(
            backend, incumbent, prompts, constitution, cfg.sampling, retention=retention
        )
    cand = await evaluate_policy(
        backend, candidate, prompts, constitution, cfg.sampling, retention=retention
    )
    if judge is None:
        base = PolicyRef(version="v0", base_model=incumbent.base_model)
        judge = PairwiseJudge(serve(backend, base), constitution.judge.pairwise)
    verdicts = list(
        await asyncio.gather(
            *(
                judge.compare(p, a, b, a_passes=pa, b_passes=pb)
                for p, a, b, pa, pb in zip(
                    texts, inc.responses, cand.responses, inc.passes_checks,
                    cand.passes_checks, strict=True,
                )
            )
        )
    )
    counts = count_verdicts(verdicts, candidate="b")
    reasons, unchecked = _failed_thresholds(cand, inc, counts, cfg, baseline_eval)
    diagnostics = diagnose(verdicts)
    if diagnostics.near_chance and cfg.min_win_rate is not None:
        # Still a guard, but not evidence: say so wherever the result is read.
        unchecked.append(f"win rate carries little signal: {diagnostics.summary()}")
    rate = counts.win_rate
    ci = _interval(counts)
    if cfg.require_improvement:
        reasons += improvement_reasons(cand, inc, ci, diagnostics, cfg.max_p_value)
    result = GateResult(
        candidate=cand,
        incumbent=inc,
        win_rate=rate,
        win_rate_ci=ci,
        **counts.model_dump(),
        length_ratio=length_ratio(cand, inc),
        retention_increase=retention_increase(cand, inc),
        passed=not reasons,
        reasons=reasons,
        unchecked=unchecked,
        thresholds=cfg.model_dump(mode="json"),
        verdicts=verdicts,
        judge=diagnostics,
    )
    log.info(
        "gate %s vs %s: win rate %s, %s", candidate.version, incumbent.version,
        "n/a" if rate is None else f"{rate:.2f}", "passed" if result.passed else "; ".join(reasons),
    )
    return result
