"""Build the run-time objects of the critique loop from configuration: roles and contexts.

The one place where configuration becomes backends, roles and a :class:`CritiqueContext`; the
CLI, the runner, the benchmarks and embedding code all come through here.
"""

from __future__ import annotations

from selfimprove.backends.base import Backend
from selfimprove.backends.factory import make_backend
from selfimprove.config import BackendConfig, CritiqueConfig, RolesConfig
from selfimprove.constitution import Constitution, load_constitution
from selfimprove.critique_loop.state import CritiqueContext
from selfimprove.roles import Roles
from selfimprove.types import PolicyRef

__all__ = ["critique_context", "make_context", "make_roles"]


def make_roles(cfg: RolesConfig, policy: PolicyRef | None = None) -> Roles:
    """Backends for policy, critic, reviser and judge; identical configs share one instance.

    ``policy`` (default: the base model, v0) answers as the policy and as every role without a
    backend of its own; a separately configured critic, reviser or judge keeps its own model.
    """
    assert cfg.policy.backend is not None, "the policy role needs a backend"
    policy_backend = make_backend(cfg.policy.backend, policy)
    cache: dict[str, Backend] = {}

    def backend_for(role_backend: BackendConfig | None) -> Backend | None:
        if role_backend is None:
            return None  # shares the policy
        key = role_backend.model_dump_json()
        if key not in cache:
            cache[key] = make_backend(role_backend)
        return cache[key]

    roles = Roles(
        policy=policy_backend,
        critic=backend_for(cfg.critic.backend),
        reviser=backend_for(cfg.reviser.backend),
        judge=backend_for(cfg.judge.backend),
        policy_sampling=cfg.policy.sampling,
        critic_sampling=cfg.critic.sampling,
        reviser_sampling=cfg.reviser.sampling,
        sample_sampling=cfg.sampler.sampling,
        judge_sampling=cfg.judge.sampling,
    )
    base = PolicyRef(version="v0", base_model=cfg.policy.backend.model)
    return roles.following(policy or base)


def critique_context(cfg: CritiqueConfig, constitution: Constitution, roles: Roles,
                     *, seed: int | None = None) -> CritiqueContext:
    """A critique context with every loop and judge setting of ``cfg``."""
    return CritiqueContext(
        constitution=constitution,
        roles=roles,
        max_rounds=cfg.max_rounds,
        principles_per_round=cfg.principles_per_round,
        critic=cfg.critic,
        reviser=cfg.reviser,
        num_samples=cfg.num_samples,
        score_samples=cfg.score_samples,
        sample_with_examples=cfg.sample_with_examples,
        revision_samples=cfg.revision_samples,
        judge_logprobs=cfg.judge_logprobs,
        judge_when_checks_decide=cfg.judge_when_checks_decide,
        seed=cfg.seed if seed is None else seed,
    )


def make_context(cfg: CritiqueConfig, policy: PolicyRef | None = None) -> CritiqueContext:
    """Load the constitution and the role backends; ``policy`` is served by the policy role."""
    constitution = load_constitution(cfg.constitution)  # before loading any model: fail fast
    return critique_context(cfg, constitution, make_roles(cfg.roles, policy))
