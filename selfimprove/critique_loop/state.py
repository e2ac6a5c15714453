"""Critique-graph state (a TypedDict with explicit reducers) and its run-time context."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypedDict

from typing_extensions import NotRequired

from selfimprove.checks import Check
from selfimprove.roles import Roles
from selfimprove.types import CheckResult, Critique, RoundRecord, Verdict

if TYPE_CHECKING:
    from selfimprove.backends.base import Backend
    from selfimprove.constitution import Constitution
    from selfimprove.judges import PairwiseJudge, PointwiseJudge

__all__ = ["CritiqueContext", "CritiqueInput", "CritiqueState", "Roles"]


class CritiqueInput(TypedDict):
    """What the graph is given: a prompt or a conversation, and optionally the answer to
    critique (then nothing is generated first)."""

    prompt_id: NotRequired[str]  # default: a hash of the prompt (or the conversation's text)
    prompt: NotRequired[str]
    # a conversation instead of a prompt: chat messages (dicts with role and content, our
    # Message or LangChain messages); a final assistant turn is the answer to critique
    messages: NotRequired[list[Any]]
    response: NotRequired[str]  # the answer already given (an agent's), critiqued as it is
    response_truncated: NotRequired[bool]  # that answer had hit its token cap
    source: NotRequired[str]  # "traffic" for recorded agent traffic (store provenance)
    prompt_checks: NotRequired[list[dict[str, Any]]]  # the prompt's own checks (JSON)


class CritiqueState(TypedDict, total=False):
    prompt_id: str
    prompt: str  # the text critic, reviser and judge read (a conversation's transcript)
    messages: list[Any]  # the input conversation, never written (an agent's state owns it)
    conversation: list[dict[str, str]]  # what the response answers, as JSON messages
    response_given: bool  # the first response came with the input, not from the policy
    response_truncated: bool  # the given first response had hit its token cap
    source: str  # "loop" (default) or "traffic"
    prompt_checks: list[dict[str, Any]]  # the prompt's own checks (JSON)
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


def prompt_checks(raw: list[dict[str, Any]] | None) -> tuple[Check, ...]:
    """A prompt's checks from their JSON form (validated when the prompt was loaded)."""
    if not raw:
        return ()
    from selfimprove.sources import parse_prompt_checks

    return parse_prompt_checks(raw)


@dataclass
class CritiqueContext:
    """Everything the critique graph's nodes need besides the state (LangGraph run context)."""

    constitution: Constitution
    roles: Roles
    max_rounds: int = 2
    principles_per_round: int = 1
    critic: str = "model"  # "checks": the failed rules are the critique; passing answers stand
    reviser: str = "model"  # "repair": mechanical fixes of failed checks where all have one
    num_samples: int = 0  # extra sampled responses (best-of-N harvesting)
    score_samples: bool = True  # the pointwise judge scores them; else the checks alone rank
    sample_with_examples: bool = True  # the constitution's examples precede the sampled prompt
    revision_samples: int = 1  # revisions sampled per critique; the checks pick one
    judge_logprobs: bool = True
    judge_when_checks_decide: bool = False  # ask the judge even when the checks decide
    seed: int = 0

    @property
    def policy_version(self) -> str:
        return self.roles.policy_version

    def checks_for(self, state: CritiqueState) -> list[Check]:
        """The constitution's checks followed by the prompt's own."""
        return [*self.constitution.checks, *prompt_checks(state.get("prompt_checks"))]

    def pairwise_judge(self, backend: Backend | None = None) -> PairwiseJudge:
        """The constitution's pairwise judge with every judge setting of this context;
        ``backend`` replaces the judge role's (the gate judges with a fixed version)."""
        from selfimprove.judges import PairwiseJudge

        return PairwiseJudge(
            backend or self.roles.judge,  # type: ignore[arg-type]
            self.constitution.judge.pairwise,
            use_logprobs=self.judge_logprobs,
            sampling=self.roles.judge_sampling,
            judge_when_checks_decide=self.judge_when_checks_decide,
        )

    def pointwise_judge(self) -> PointwiseJudge | None:
        """The additive-rubric judge for best-of-N samples; None without a rubric."""
        from selfimprove.judges import PointwiseJudge

        rubric = self.constitution.judge.pointwise
        if not rubric:
            return None
        return PointwiseJudge(
            self.roles.judge,  # type: ignore[arg-type]
            list(rubric),
            use_logprobs=self.judge_logprobs,
            sampling=self.roles.judge_sampling,
        )
