"""Pydantic data passed between layers: messages, sampling, completions, checks, verdicts."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant"]


class Message(BaseModel):
    model_config = ConfigDict(frozen=True)
    role: Role
    content: str


Conversation = list[Message]


class SamplingParams(BaseModel):
    """Sampling settings for one request. ``temperature == 0`` means greedy."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_new_tokens: int = Field(default=128, ge=1)
    temperature: float = Field(default=0.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    seed: int | None = None
    stop: tuple[str, ...] = ()


class Completion(BaseModel):
    text: str
    num_tokens: int = 0
    finish_reason: Literal["stop", "length"] = "stop"


class PolicyRef(BaseModel):
    """A value naming a policy: a base model plus, optionally, a LoRA adapter directory.

    Backends receive this value; they never see the registry.
    """

    model_config = ConfigDict(frozen=True)
    version: str = "v0"
    base_model: str = "smollm2-135m-instruct"
    adapter_path: str | None = None


class CheckResult(BaseModel):
    check_id: str
    kind: str
    passed: bool
    hard: bool = True
    detail: str = ""


def passes(results: Iterable[CheckResult]) -> bool:
    """True when every hard check passed (soft checks never fail a response): the one rule."""
    return all(r.passed for r in results if r.hard)


class Critique(BaseModel):
    round: int
    principle_ids: list[str]
    failed_checks: list[str] = Field(default_factory=list)
    text: str


class OrderJudgment(BaseModel):
    """One ordering of a pairwise judgment: which slot held which response and what was said."""

    first: Literal["original", "revision", "a", "b"]
    p_first: float | None = Field(
        default=None, description="probability the response shown first is better"
    )
    choice: Literal["first", "second", "abstain"]
    method: Literal["logprob", "generated", "abstain"]
    raw: str = ""


class Verdict(BaseModel):
    """A position-swapped pairwise verdict between responses ``a`` and ``b``.

    ``p_b`` is the soft label: the probability that ``b`` is better, averaged over both orders.
    """

    winner: Literal["a", "b", "tie", "abstain"]
    p_b: float | None = None
    decided_by: Literal["judge", "checks", "flip", "abstain"]
    orders: list[OrderJudgment] = Field(default_factory=list)
    a_passes_checks: bool = True
    b_passes_checks: bool = True

    @property
    def margin(self) -> float:
        return 0.0 if self.p_b is None else abs(self.p_b - 0.5) * 2


class RoundRecord(BaseModel):
    """One pass of check → critique → refine."""

    round: int
    response: str
    checks: list[CheckResult]
    critique: Critique | None = None
    revision: str | None = None
    revision_truncated: bool = Field(
        default=False, description="the revision ran out of its token budget (not a clean example)"
    )
    reviser: Literal["model", "repair", "sample"] = Field(
        default="model", description="who revised: the reviser model, mechanical repairs of "
        "the failed checks, or (sample) an extra sample that passes the checks as it is")
    repaired_checks: list[str] = Field(
        default_factory=list, description="ids of the failed checks the repairs fixed")
    from_sample: bool = Field(
        default=False, description="the revision is an extra sample (repaired or not), not an "
        "edit of the response")


class CritiqueResult(BaseModel):
    """What the critique graph returns for one prompt (also what harvest consumes)."""

    prompt_id: str
    prompt: str = Field(description="the text critic and judge read: the prompt, or the "
                        "conversation's transcript")
    messages: list[Message] = Field(
        default_factory=list, description="the conversation the response answers (empty: the "
        "prompt as one user turn)")
    response_given: bool = Field(
        default=False, description="the first response was given (an agent's), not generated")
    first_truncated: bool = Field(
        default=False, description="the given first response had hit its token cap when it "
        "was served")
    source: Literal["loop", "traffic"] = Field(
        default="loop", description="traffic: recorded from an agent or a served request")
    prompt_checks: list[dict] = Field(
        default_factory=list, description="the prompt's own checks (JSON), beside the "
        "constitution's"
    )
    constitution: str
    constitution_hash: str
    policy_version: str = "v0"
    first_response: str
    final_response: str
    rounds: list[RoundRecord]
    final_checks: list[CheckResult]
    verdict: Verdict | None = Field(
        default=None, description="a = first response, b = final revision"
    )
    samples: list[str] = Field(default_factory=list, description="extra samples for best-of-N")
    sample_scores: list[float | None] = Field(default_factory=list)
    sample_checks_passed: list[bool] = Field(default_factory=list)
    generated_tokens: int = 0

    @property
    def final_passes(self) -> bool:
        return passes(self.final_checks)

    def conversation(self) -> list[Message]:
        """The conversation the responses answer (TRL's conversational prompt)."""
        return list(self.messages) or [Message(role="user", content=self.prompt)]

    @property
    def final_truncated(self) -> bool:
        """Whether the final response hit its token budget: the last revision's, or, with no
        revision, a given first response's (a served answer cut off)."""
        revised = [r for r in self.rounds if r.revision is not None]
        return revised[-1].revision_truncated if revised else self.first_truncated
