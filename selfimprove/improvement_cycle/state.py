"""Improvement-cycle state and run-time context."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypedDict

if TYPE_CHECKING:
    from selfimprove.config import RunConfig
    from selfimprove.critique_loop.state import CritiqueContext
    from selfimprove.registry import PolicyRegistry
    from selfimprove.rundir import RunDir
    from selfimprove.sources import PromptRecord
    from selfimprove.store import PreferenceStore
    from selfimprove.types import PolicyRef


class CycleState(TypedDict, total=False):
    cycle: int  # the cycle in progress, 0-based (records and files say cycle + 1)
    batch: list[dict[str, Any]]  # this cycle's prompt records (JSON)
    results: list[dict[str, Any]]  # critique results (JSON), cleared once harvested
    harvested: dict[str, Any]  # counts of the cycle's harvest
    pairs_since_train: int
    candidate: str | None
    train_metrics: dict[str, Any]
    evaluation: dict[str, Any] | None
    decision: str
    reasons: list[str]
    stage_seconds: dict[str, float]
    records: Annotated[list[dict[str, Any]], operator.add]
    done: bool


#: "loop": the critique graph makes the data; "control": the cheapest thing that could explain
#: the loop's result does (see :mod:`selfimprove.improvement_cycle.control`)
Arm = Literal["loop", "control"]


@dataclass
class CycleContext:
    """What the cycle's nodes use besides the state: services, prompts, and the trainer.

    ``critique`` holds the roles as configured; a node that needs a version to answer binds it
    explicitly with :meth:`critique_for` (nothing switches a shared backend behind its back).
    """

    cfg: RunConfig
    run: RunDir
    store: PreferenceStore
    registry: PolicyRegistry
    critique: CritiqueContext
    train_prompts: list[PromptRecord]
    heldout_prompts: list[PromptRecord]
    #: replaces :func:`selfimprove.training.policy.train` (same arguments); None: the real one
    trainer: Callable[..., Any] | None
    #: called with (stage, message) for live progress
    progress: Callable[[str, str], None] = field(default=lambda stage, msg: None)
    arm: Arm = "loop"

    def critique_for(self, policy: PolicyRef, seed: int | None = None) -> CritiqueContext:
        """The critique context with ``policy`` answering as the policy (and as every role
        that shares its backend)."""
        changes: dict[str, Any] = {"roles": self.critique.roles.following(policy)}
        if seed is not None:
            changes["seed"] = seed
        return dataclasses.replace(self.critique, **changes)

    @property
    def eval_prompts(self) -> list[PromptRecord]:
        """The held-out prompts every version is evaluated on (with their own checks)."""
        return self.heldout_prompts[: self.cfg.gate.num_prompts]
