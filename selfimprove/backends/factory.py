"""The one factory for backends (``match cfg.kind``)."""

from __future__ import annotations

from selfimprove.backends.base import Backend
from selfimprove.config import BackendConfig
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

            return VLLMBackend(
                cfg.model,
                dtype=cfg.dtype,
                switch=cfg.switch,
                max_lora_rank=cfg.max_lora_rank,
                policy=policy,
                **cfg.engine_args,
            )
    raise ValueError(f"unknown backend kind {cfg.kind!r}")
