"""Critique-graph state (a TypedDict with explicit reducers) and its run-time context."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, TypedDict

from selfimprove.types import CheckResult, Critique, RoundRecord, SamplingParams, Verdict

if TYPE_CHECKING:
    from selfimprove.backends.base import Backend
    from selfimprove.constitution import Constitution


class CritiqueInput(TypedDict):
    prompt_id: str
    prompt: str


class CritiqueState(TypedDict, total=False):
    prompt_id: str
    prompt: str
    first_response: str
    response: str  # the current response: the first one, then each revision
    round: int  # revisions made so far
    checks: list[CheckResult]  # of the current response
    critique: Critique | None
    rounds: Annotated[list[RoundRecord], operator.add]
    samples: list[str]
    sample_checks_passed: list[bool]
    sample_scores: list[float | None]
    verdict: Verdict | None
    generated_tokens: Annotated[int, operator.add]


@dataclass
class Roles:
    """The backend and sampling settings of each role; by default all are the policy."""

    policy: Backend
    critic: Backend | None = None
    reviser: Backend | None = None
    judge: Backend | None = None
    policy_sampling: SamplingParams = field(
        default_factory=lambda: SamplingParams(max_new_tokens=128)
    )
    critic_sampling: SamplingParams = field(
        default_factory=lambda: SamplingParams(max_new_tokens=96)
    )
    reviser_sampling: SamplingParams = field(
        default_factory=lambda: SamplingParams(max_new_tokens=128)
    )
    sample_sampling: SamplingParams = field(
        default_factory=lambda: SamplingParams(max_new_tokens=128, temperature=0.8, top_p=0.95)
    )

    def __post_init__(self) -> None:
        self.critic = self.critic or self.policy
        self.reviser = self.reviser or self.policy
        self.judge = self.judge or self.policy


@dataclass
class CritiqueContext:
    """Everything the critique graph's nodes need besides the state (LangGraph run context)."""

    constitution: Constitution
    roles: Roles
    max_rounds: int = 2
    principles_per_round: int = 1
    num_samples: int = 0  # extra sampled responses scored pointwise (best-of-N harvesting)
    judge_logprobs: bool = True
    judge_when_checks_decide: bool = False  # ask the judge even when the checks decide
    seed: int = 0
    policy_version: str = "v0"
