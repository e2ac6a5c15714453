"""The one factory for backends (``match cfg.kind``) and for the four roles."""

from __future__ import annotations

from selfimprove.backends.base import Backend
from selfimprove.config import BackendConfig, RolesConfig
from selfimprove.graph.state import Roles
from selfimprove.types import PolicyRef


def make_backend(cfg: BackendConfig, policy: PolicyRef | None = None) -> Backend:
    """Build one backend from its config (heavy imports happen here, lazily)."""
    match cfg.kind:
        case "transformers":
            from selfimprove.backends.transformers import TransformersBackend

            return TransformersBackend(
                cfg.model,
                device=cfg.device,
                dtype=cfg.dtype,
                max_batch_size=cfg.max_batch_size,
                max_wait_ms=cfg.max_wait_ms,
                policy=policy,
            )
        case "openai":
            from selfimprove.backends.openai import OpenAIBackend

            assert cfg.base_url is not None
            return OpenAIBackend(
                cfg.base_url,
                cfg.model,
                api_key_env=cfg.api_key_env,
                timeout_s=cfg.timeout_s,
                max_attempts=cfg.max_attempts,
            )
        case "vllm":
            from selfimprove.backends.vllm import VLLMBackend

            return VLLMBackend(cfg.model)
    raise ValueError(f"unknown backend kind {cfg.kind!r}")


def make_roles(cfg: RolesConfig, policy: PolicyRef | None = None) -> Roles:
    """Backends for policy, critic, reviser and judge; identical configs share one instance.

    Only the policy role serves the trained ``policy``; a separately configured critic,
    reviser or judge keeps its own model.
    """
    assert cfg.policy.backend is not None, "the policy role needs a backend"
    policy_backend = make_backend(cfg.policy.backend, policy)
    cache: dict[str, Backend] = {}

    def backend_for(role_backend: BackendConfig | None) -> Backend:
        if role_backend is None:
            return policy_backend
        key = role_backend.model_dump_json()
        if key not in cache:
            cache[key] = make_backend(role_backend)
        return cache[key]

    return Roles(
        policy=policy_backend,
        critic=backend_for(cfg.critic.backend),
        reviser=backend_for(cfg.reviser.backend),
        judge=backend_for(cfg.judge.backend),
        policy_sampling=cfg.policy.sampling,
        critic_sampling=cfg.critic.sampling,
        reviser_sampling=cfg.reviser.sampling,
        sample_sampling=cfg.sampler.sampling,
    )


async def close_roles(roles: Roles) -> None:
    seen: set[int] = set()
    for b in (roles.policy, roles.critic, roles.reviser, roles.judge):
        if b is not None and id(b) not in seen:
            seen.add(id(b))
            await b.aclose()
