"""Improvement-cycle state and run-time context."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypedDict

if TYPE_CHECKING:
    from selfimprove.config import RunConfig
    from selfimprove.graph.state import CritiqueContext
    from selfimprove.registry import PolicyRegistry
    from selfimprove.store import PreferenceStore


class CycleState(TypedDict, total=False):
    cycle: int  # the cycle in progress, 0-based
    batch: list[list[str]]  # [prompt_id, prompt] pairs of this cycle
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


@dataclass
class CycleContext:
    """What the cycle's nodes use besides the state: services, prompts, and the trainer."""

    cfg: RunConfig
    run_dir: Path
    store: PreferenceStore
    registry: PolicyRegistry
    critique: CritiqueContext
    train_prompts: list[tuple[str, str]]
    heldout_prompts: list[tuple[str, str]]
    #: replaces :func:`selfimprove.training.run.train` (same arguments); None: the real one
    trainer: Callable[..., Any] | None
    #: called with (stage, message) for live progress
    progress: Callable[[str, str], None] = field(default=lambda stage, msg: None)
