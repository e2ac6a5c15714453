"""Build the run-time objects of the critique loop from configuration."""

from __future__ import annotations

from selfimprove.backends.factory import make_roles
from selfimprove.config import CritiqueConfig
from selfimprove.constitution import load_constitution
from selfimprove.graph.state import CritiqueContext
from selfimprove.types import PolicyRef


def make_context(cfg: CritiqueConfig, policy: PolicyRef | None = None) -> CritiqueContext:
    """Load the constitution and the role backends; ``policy`` is served by the policy role."""
    constitution = load_constitution(cfg.constitution)  # before loading any model: fail fast
    roles = make_roles(cfg.roles, policy)
    return CritiqueContext(
        constitution=constitution,
        roles=roles,
        max_rounds=cfg.max_rounds,
        principles_per_round=cfg.principles_per_round,
        num_samples=cfg.num_samples,
        judge_logprobs=cfg.judge_logprobs,
        judge_when_checks_decide=cfg.judge_when_checks_decide,
        seed=cfg.seed,
        policy_version=policy.version if policy else "v0",
    )
