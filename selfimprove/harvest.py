"""Turn critique results into preference pairs and SFT rows (TRL conversational format).

Two strategies:

- ``revision``: the first response against the final revision, labelled by the
  position-swapped pairwise verdict (Constitutional AI style); a row's ``strategy`` says who
  revised: ``revision`` (the reviser model), ``repaired_revision`` (the failed checks'
  mechanical fixes) or ``sample_revision`` (an extra sample that passed the checks);
- ``best_of_n``: the best against the worst of N samples, scored by the pointwise judge
  (Self-Rewarding style) or ranked by the checks alone (rejection sampling); with it, a prompt
  whose revision is no clean SFT example gives its best passing sample instead.

Executable checks dominate everywhere: a response that fails a hard check is never chosen.
Every row carries provenance columns; the store fixes their Parquet schema.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, Field

from selfimprove.checks import EndsWith, IncludeWords, StartsWith, required_phrases
from selfimprove.config import HarvestConfig
from selfimprove.critique_loop.state import prompt_checks
from selfimprove.degeneration import repeats_itself, says_nothing_beyond
from selfimprove.store import content_hash
from selfimprove.types import CheckResult, CritiqueResult, OrderJudgment, Verdict, passes

__all__ = ["HarvestOutput", "bare_answer", "harvest"]



class HarvestOutput(BaseModel):
    """Rows for the store, plus why the rest were dropped."""

    pairs: list[dict[str, Any]] = Field(default_factory=list)
    sft: list[dict[str, Any]] = Field(default_factory=list)
    dropped: dict[str, int] = Field(default_factory=dict)
    kept: dict[str, int] = Field(default_factory=dict)


class _Side(BaseModel):
    """One response of a candidate pair and what is known about it."""

    text: str
    passes: bool
    checks: list[CheckResult] = Field(default_factory=list)
    score: float | None = None


class _Drop(Exception):
    """Internal: a pair is dropped for ``reason``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def _normalized(text: str) -> str:
    return " ".join(text.split())


def _words(text: str) -> int:
    return len(text.split())


def _p_b(order: OrderJudgment) -> float | None:
    """The probability that ``b`` (the revision) is better, as seen in one order."""
    if order.p_first is None:
        return None
    b_first = order.first in ("b", "revision")
    return order.p_first if b_first else 1.0 - order.p_first


def _order_labels(verdict: Verdict | None) -> tuple[float | None, float | None]:
    if verdict is None:
        return None, None
    labels = [_p_b(o) for o in verdict.orders[:2]]
    labels += [None] * (2 - len(labels))
    return labels[0], labels[1]


def _principles(result: CritiqueResult) -> list[str]:
    seen: dict[str, None] = {}
    for rnd in result.rounds:
        if rnd.critique is not None:
            seen.update(dict.fromkeys(rnd.critique.principle_ids))
    return list(seen)


def _critiques(result: CritiqueResult) -> list[str]:
    return [r.critique.text for r in result.rounds if r.critique is not None]


def _first_checks(result: CritiqueResult) -> list[CheckResult]:
    """Check results of the first response: round 0's, or the final ones if nothing changed."""
    if result.rounds:
        return list(result.rounds[0].checks)
    if result.first_response == result.final_response:
        return list(result.final_checks)
    return []


def _check_json(chosen: _Side, rejected: _Side, prompt_checks: list[dict]) -> str:
    def side(s: _Side) -> dict[str, Any]:
        return {
            "passes": s.passes,
            "score": s.score,
            "checks": [c.model_dump() for c in s.checks],
        }

    # The prompt's own checks are recorded even when empty: they say which rules applied.
    return json.dumps({"chosen": side(chosen), "rejected": side(rejected),
                       "prompt_checks": prompt_checks}, sort_keys=True)


def _says_nothing(text: str, result: CritiqueResult) -> bool:
    """No word left once the prompt's required opening and closing words are taken out: "The
    end." passes "end with 'The end.'" and teaches an empty answer."""
    return says_nothing_beyond(text, required_phrases(prompt_checks(result.prompt_checks)))


def bare_answer(raw_checks: list[dict[str, Any]] | None) -> str | None:
    """An answer of only the words a prompt's checks ask for: its opening words, the words it
    must include, its closing words (None: the checks ask for none). It passes those checks and
    says nothing: the cheapest way to satisfy them, which DPO finds unless it is shown as worse.
    """
    checks = prompt_checks(raw_checks)
    words = [w for c in checks if isinstance(c, IncludeWords) for w in c.words]
    opening = [c.value for c in checks if isinstance(c, StartsWith)]
    closing = [c.value for c in checks if isinstance(c, EndsWith)]
    parts = opening + words + closing
    return " ".join(parts) if parts else None


def _guard(
    chosen: _Side, rejected: _Side, margin: float, cfg: HarvestConfig, result: CritiqueResult
) -> None:
    """Filters shared by all strategies; raises :class:`_Drop`."""
    if not chosen.text.strip() or not rejected.text.strip():
        raise _Drop("empty")
    if _normalized(chosen.text) == _normalized(rejected.text):
        raise _Drop("identical")
    if not chosen.passes:
        # Both sides fail a hard check: neither may be taught as the preferred answer.
        raise _Drop("chosen_fails_checks")
    if repeats_itself(chosen.text):
        # Measured on the main job: revisions that loop on a sentence pass every length
        # check, and training on them taught the policy to repeat itself.
        raise _Drop("chosen_repeats_itself")
    if _says_nothing(chosen.text, result):
        raise _Drop("chosen_says_nothing")
    if margin < cfg.min_margin:
        raise _Drop("below_margin")
    ratio = _words(chosen.text) / max(_words(rejected.text), 1)
    if cfg.max_length_ratio is not None and ratio > cfg.max_length_ratio:
        raise _Drop("length_guard")
    if cfg.min_length_ratio is not None and ratio < cfg.min_length_ratio:
        raise _Drop("shorter_chosen")


def _revision_pair(result: CritiqueResult, cfg: HarvestConfig) -> tuple[_Side, _Side, float, str]:
    """Chosen, rejected, margin and deciding signal for the first-vs-final pair."""
    if not any(r.revision is not None for r in result.rounds):
        raise _Drop("no_revision")
    if result.final_truncated:
        # A revision cut off by its token budget would teach stopping mid-answer, and its
        # passing a length check says more about the budget than about the critique.
        raise _Drop("truncated_revision")
    verdict = result.verdict
    # Trust a failure from either source: the verdict's flags or the recorded check results.
    first_checks = _first_checks(result)
    a = _Side(
        text=result.first_response,
        checks=first_checks,
        passes=(verdict is None or verdict.a_passes_checks) and passes(first_checks),
    )
    b = _Side(
        text=result.final_response,
        checks=list(result.final_checks),
        passes=(verdict is None or verdict.b_passes_checks) and result.final_passes,
    )
    if _normalized(a.text) == _normalized(b.text):
        raise _Drop("identical")
    if a.passes != b.passes:
        # Executable checks decide, whatever the judge preferred.
        return (b, a, 1.0, "checks") if b.passes else (a, b, 1.0, "checks")
    if verdict is None:
        raise _Drop("no_verdict")
    if verdict.winner in ("tie", "abstain"):
        raise _Drop(verdict.winner)
    chosen, rejected = (b, a) if verdict.winner == "b" else (a, b)
    return chosen, rejected, verdict.margin, verdict.decided_by


def _best_of_n_pair(result: CritiqueResult, cfg: HarvestConfig) -> tuple[_Side, _Side, float, str]:
    """Chosen, rejected, margin and deciding signal for the best-vs-worst sample pair."""
    if not result.samples:
        raise _Drop("no_samples")
    n = len(result.samples)
    # Missing entries mean "not scored" and "no check failed", never a made-up score.
    scores = (list(result.sample_scores) + [None] * n)[:n]
    passed = (list(result.sample_checks_passed) + [True] * n)[:n]
    # Without any score the checks alone rank the samples (rejection sampling).
    scored = any(s is not None for s in scores)
    first_checks = _first_checks(result)
    sides: list[_Side] = []
    for text, score, ok in zip(result.samples, scores, passed, strict=True):
        if scored and score is None:
            continue  # an abstaining judge gives no evidence either way
        checks = first_checks if text == result.first_response else []
        sides.append(_Side(text=text, score=score, passes=ok and passes(checks), checks=checks))
    if len(sides) < 2:
        raise _Drop("too_few_scored" if scored else "too_few_samples")
    # stable: ties keep sample order
    ranked = sorted(sides, key=lambda s: (s.passes, s.score if s.score is not None else 0.0))
    worst, best = ranked[0], ranked[-1]
    if (best.passes, best.score) == (worst.passes, worst.score):
        raise _Drop("all_equal")
    if best.passes != worst.passes:
        return best, worst, 1.0, "checks"
    gap = (best.score or 0.0) - (worst.score or 0.0)
    return best, worst, min(gap / cfg.score_scale, 1.0), "score"


#: a row's strategy by who made the final revision (the pair and the SFT row alike)
_REVISED_BY = {"repair": "repaired_revision", "sample": "sample_revision"}


def _revised_by(result: CritiqueResult) -> str | None:
    """Who made the final revision ("model", "repair", "sample"); None without one."""
    revised = [r for r in result.rounds if r.revision is not None]
    return revised[-1].reviser if revised else None


def _messages(role: str, text: str) -> list[dict[str, str]]:
    return [{"role": role, "content": text}]


def _prompt(result: CritiqueResult) -> list[dict[str, str]]:
    """The whole conversation is the prompt (TRL's conversational format allows it)."""
    return [m.model_dump() for m in result.conversation()]


def _provenance(result: CritiqueResult, cycle: int, created_at: str) -> dict[str, Any]:
    p1, p2 = _order_labels(result.verdict)
    return {
        "prompt_id": result.prompt_id,
        "constitution": result.constitution,
        "constitution_hash": result.constitution_hash,
        "principle_ids": _principles(result),
        "p_b_order1": p1,
        "p_b_order2": p2,
        "critiques": _critiques(result),
        "policy_version": result.policy_version,
        "source": result.source,
        "cycle": cycle,
        "created_at": created_at,
    }


def _pair_row(
    result: CritiqueResult,
    strategy: str,
    chosen: _Side,
    rejected: _Side,
    margin: float,
    decided_by: str,
    base: dict[str, Any],
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "prompt": _prompt(result),
        "chosen": _messages("assistant", chosen.text),
        "rejected": _messages("assistant", rejected.text),
        "strategy": strategy,
        **base,
        "check_results": _check_json(chosen, rejected, result.prompt_checks),
        "margin": float(margin),
        "decided_by": decided_by,
    }
    if strategy == "best_of_n":
        row["principle_ids"], row["critiques"] = [], []  # samples were not critiqued
        row["p_b_order1"] = row["p_b_order2"] = None
    row["content_hash"] = content_hash(row)
    return row


def _sft_row(result: CritiqueResult, base: dict[str, Any]) -> dict[str, Any]:
    checks = [c.model_dump() for c in result.final_checks]
    messages = _prompt(result) + _messages("assistant", result.final_response)
    verdict = result.verdict
    row: dict[str, Any] = {
        "messages": messages,
        "strategy": _REVISED_BY.get(_revised_by(result) or "", "final_revision"),
        **base,
        "check_results": json.dumps({"final": checks, "prompt_checks": result.prompt_checks},
                                    sort_keys=True),
        "margin": verdict.margin if verdict is not None and verdict.p_b is not None else None,
    }
    row["content_hash"] = content_hash(row)
    return row


def _best_sample(result: CritiqueResult) -> str | None:
    """The best sample that passes the checks, does not repeat itself and says more than the
    prompt's required words (highest score, then sample order); None when there is none."""
    n = len(result.samples)
    scores = (list(result.sample_scores) + [None] * n)[:n]
    passed = (list(result.sample_checks_passed) + [False] * n)[:n]
    good = [
        (score if score is not None else 0.0, -i, text)
        for i, (text, score, ok) in enumerate(zip(result.samples, scores, passed, strict=True))
        if ok and text.strip() and not repeats_itself(text) and not _says_nothing(text, result)
    ]
    return max(good)[2] if good else None


def _sample_sft_row(result: CritiqueResult, text: str, base: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "messages": _prompt(result) + _messages("assistant", text),
        "strategy": "best_sample",
        **base,
        "principle_ids": [],  # the sample was not critiqued
        "critiques": [],
        "check_results": json.dumps({"sample_passes": True,
                                     "prompt_checks": result.prompt_checks}, sort_keys=True),
        "margin": None,
    }
    row["content_hash"] = content_hash(row)
    return row


def _sft_drop_reason(result: CritiqueResult, cfg: HarvestConfig) -> str | None:
    """Why the final response is no SFT example, or None when it is one."""
    if not result.final_response.strip():
        return "empty_sft"
    if result.final_truncated:
        return "truncated_sft"
    if repeats_itself(result.final_response):
        return "repetitive_sft"
    if _says_nothing(result.final_response, result):
        return "says_nothing_sft"
    if cfg.sft_requires_checks and not result.final_passes:
        return "checks_failed_sft"
    return None


def harvest(
    results: Sequence[CritiqueResult],
    cfg: HarvestConfig,
    *,
    cycle: int = 0,
    now: datetime | None = None,
) -> HarvestOutput:
    """Build preference pairs and SFT rows from critique results.

    ``dropped`` counts every pair or SFT row not produced, by reason; ``kept`` counts pairs by
    strategy (and SFT rows under ``"sft"``).
    """
    created_at = (now or datetime.now(timezone.utc)).isoformat()
    builders = {"revision": _revision_pair, "best_of_n": _best_of_n_pair}
    out = HarvestOutput()
    dropped: Counter[str] = Counter()
    kept: Counter[str] = Counter()
    kept_bare: set[str] = set()
    for result in results:
        base = _provenance(result, cycle, created_at)
        for strategy in dict.fromkeys(cfg.strategies):
            try:
                chosen, rejected, margin, decided_by = builders[strategy](result, cfg)
                _guard(chosen, rejected, margin, cfg, result)
            except _Drop as drop:
                dropped[drop.reason] += 1
                continue
            label = strategy
            if strategy == "revision":
                label = _REVISED_BY.get(_revised_by(result) or "", strategy)
            out.pairs.append(_pair_row(result, label, chosen, rejected, margin, decided_by, base))
            kept[label] += 1
            bare = bare_answer(result.prompt_checks) if cfg.bare_negatives else None
            if bare is not None and result.prompt_id not in kept_bare:
                # once a prompt: the pair says what the checks alone cannot (an answer must
                # say something), and more copies would outweigh the prompt's real pairs
                kept_bare.add(result.prompt_id)
                nothing = _Side(text=bare, passes=False)
                out.pairs.append(
                    _pair_row(result, "bare_phrases", chosen, nothing, 1.0, "says_nothing", base)
                )
                kept["bare_phrases"] += 1
        reason = _sft_drop_reason(result, cfg)
        if reason is None:
            row = _sft_row(result, base)
            out.sft.append(row)
            kept["sft"] += 1
            if row["strategy"] != "final_revision":
                kept[f"sft_{row['strategy']}"] += 1
            continue
        dropped[reason] += 1
        # Where the revision is no clean example, a passing sample still is (rejection
        # sampling beside critique-and-revise; the row's strategy says which produced it).
        sample = _best_sample(result) if "best_of_n" in cfg.strategies else None
        if sample is not None:
            out.sft.append(_sample_sft_row(result, sample, base))
            kept["sft"] += 1
            kept["sft_best_sample"] += 1
    out.dropped, out.kept = dict(dropped), dict(kept)
    return out
