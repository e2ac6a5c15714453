"""Measuring one policy on prompts: its answers, the constitution's checks, retention.

Everything here measures; nothing decides. The gate (:mod:`selfimprove.gate`) compares two of
these measurements, and ``selfimprove eval`` prints them.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib import resources

from pydantic import BaseModel, Field

from selfimprove.backends.base import Backend
from selfimprove.backends.served import serve
from selfimprove.checks import count_words, passes, run_checks
from selfimprove.constitution import Constitution
from selfimprove.degeneration import DegenerationStats, degeneration_stats
from selfimprove.sources import PromptRecord
from selfimprove.types import CheckResult, Message, PolicyRef, SamplingParams

__all__ = [
    "PolicyEval", "check_pass_rates", "evaluate_policy", "kind_counts", "kind_pass_rates",
    "kind_results", "retention_texts",
]


class PolicyEval(BaseModel):
    """One policy's answers to the held-out prompts and what they measure.

    Besides what the loop optimises (the checks), it keeps what training did not target:
    repetition, truncation at the token cap, near-empty answers, length, retention NLL.
    """

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
    finish_reasons: list[str] = Field(default_factory=list)
    check_pass_rates: dict[str, float] = Field(
        default_factory=dict, description="share of responses passing each check, by check id"
    )
    kind_pass_rates: dict[str, float] = Field(
        default_factory=dict,
        description="share of passed checks of each kind, among the responses it applied to "
        "(prompt checks apply to their own prompt only)",
    )
    kind_counts: dict[str, int] = Field(
        default_factory=dict, description="how many responses each check kind applied to"
    )
    kind_results: list[dict[str, bool]] = Field(
        default_factory=list,
        description="per response, each check kind run on it and whether all its checks of "
        "that kind passed (compares versions kind by kind, prompt by prompt)",
    )
    degeneration: DegenerationStats | None = None


@cache
def retention_texts() -> tuple[str, ...]:
    """The fixed general-text paragraphs shipped with the package (one per line)."""
    raw = resources.files("selfimprove").joinpath("data/retention.txt").read_text("utf-8")
    return tuple(line.strip() for line in raw.splitlines() if line.strip())


async def evaluate_policy(
    backend: Backend,
    policy: PolicyRef,
    prompts: Sequence[str | PromptRecord],
    constitution: Constitution,
    sampling: SamplingParams,
    *,
    retention: Sequence[str] | None = None,
) -> PolicyEval:
    """Serve ``policy``, answer every prompt in one batch, run the checks, measure retention.

    A :class:`~selfimprove.sources.PromptRecord` brings its own checks, run beside the
    constitution's on its answer. ``retention`` defaults to :func:`retention_texts`; an empty
    sequence skips retention.
    """
    served = serve(backend, policy)
    texts_in = [p.prompt if isinstance(p, PromptRecord) else p for p in prompts]
    own = [p.checks if isinstance(p, PromptRecord) else () for p in prompts]
    convs = [p.to_messages() if isinstance(p, PromptRecord) else [Message(role="user", content=p)]
             for p in prompts]
    params = sampling.model_copy(update={"n": 1})
    outputs = await served.generate(convs, params) if convs else []
    responses = [out[0].text for out in outputs]
    finish = [out[0].finish_reason for out in outputs]
    results = [run_checks([*constitution.checks, *extra], r)
               for r, extra in zip(responses, own, strict=True)]
    ok = [passes(r) for r in results]
    n = len(responses)
    texts = retention_texts() if retention is None else tuple(retention)
    nll: float | None = None
    if texts and served.can_measure_nll:
        values = await served.sequence_nll(list(texts))
        nll = sum(values) / len(values)
    return PolicyEval(
        version=policy.version,
        violation_rate=(n - sum(ok)) / n if n else 0.0,
        mean_words=sum(count_words(r) for r in responses) / n if n else 0.0,
        retention_nll=nll,
        n_prompts=n,
        prompts=texts_in,
        responses=responses,
        passes_checks=ok,
        finish_reasons=finish,
        check_pass_rates=check_pass_rates(results),
        kind_pass_rates=kind_pass_rates(results),
        kind_counts=kind_counts(results),
        kind_results=[kind_results(r) for r in results],
        degeneration=degeneration_stats(responses, finish),
    )


def kind_pass_rates(results: Sequence[Sequence[CheckResult]]) -> dict[str, float]:
    """Share of passed checks of each kind, over the responses each check applied to."""
    tally = _kind_tally(results)
    return {kind: passed / total for kind, (passed, total) in tally.items()}


def kind_counts(results: Sequence[Sequence[CheckResult]]) -> dict[str, int]:
    """How many checks of each kind were run (a response's two checks of one kind count
    twice, as in :func:`kind_pass_rates`)."""
    return {kind: total for kind, (_, total) in _kind_tally(results).items()}


def kind_results(checks: Sequence[CheckResult]) -> dict[str, bool]:
    """One response's check kinds, each passed only where all its checks of that kind did."""
    out: dict[str, bool] = {}
    for c in checks:
        out[c.kind] = out.get(c.kind, True) and c.passed
    return out


def _kind_tally(results: Sequence[Sequence[CheckResult]]) -> dict[str, tuple[int, int]]:
    seen: dict[str, list[int]] = {}
    for checks in results:
        for c in checks:
            tally = seen.setdefault(c.kind, [0, 0])
            tally[0] += int(c.passed)
            tally[1] += 1
    return {kind: (passed, total) for kind, (passed, total) in sorted(seen.items())}


def check_pass_rates(results: Sequence[Sequence[CheckResult]]) -> dict[str, float]:
    """Share of the responses it applied to that pass each check, by check id (in the
    checks' order)."""
    seen: dict[str, list[int]] = {}
    for checks in results:
        for c in checks:
            tally = seen.setdefault(c.check_id, [0, 0])
            tally[0] += int(c.passed)
            tally[1] += 1
    return {cid: passed / total for cid, (passed, total) in seen.items()}
