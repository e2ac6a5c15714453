"""Configuration models and the one function that loads them, plus the backend factory."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from selfimprove.models import DEFAULT_MODEL
from selfimprove.types import SamplingParams


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackendConfig(Strict):
    """Where a role's completions come from."""

    kind: Literal["transformers", "openai", "vllm"] = "transformers"
    model: str = DEFAULT_MODEL
    # local transformers / vLLM
    device: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_batch_size: int = Field(default=32, ge=1)
    max_wait_ms: float = Field(default=20.0, ge=0)
    # OpenAI-compatible HTTP
    base_url: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    timeout_s: float = Field(default=120.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)

    @model_validator(mode="after")
    def _needs_url(self) -> BackendConfig:
        if self.kind == "openai" and not self.base_url:
            raise ValueError("kind 'openai' needs base_url (e.g. http://127.0.0.1:8000/v1)")
        return self


class RoleConfig(Strict):
    """A role's backend (``None``: share the policy's) and its sampling settings."""

    backend: BackendConfig | None = None
    sampling: SamplingParams = SamplingParams()


class RolesConfig(Strict):
    policy: RoleConfig = RoleConfig(
        backend=BackendConfig(), sampling=SamplingParams(max_new_tokens=128)
    )
    critic: RoleConfig = RoleConfig(sampling=SamplingParams(max_new_tokens=96))
    reviser: RoleConfig = RoleConfig(sampling=SamplingParams(max_new_tokens=128))
    judge: RoleConfig = RoleConfig(sampling=SamplingParams(max_new_tokens=16))
    sampler: RoleConfig = RoleConfig(
        sampling=SamplingParams(max_new_tokens=128, temperature=0.8, top_p=0.95)
    )


class CritiqueConfig(Strict):
    """Settings of the critique loop."""

    constitution: str = "concise"
    max_rounds: int = Field(default=2, ge=1)
    principles_per_round: int = Field(default=1, ge=1)
    num_samples: int = Field(default=0, ge=0, description="extra samples for best-of-N pairs")
    judge_logprobs: bool = True
    seed: int = 0
    max_concurrency: int = Field(default=64, ge=1)
    roles: RolesConfig = RolesConfig()


C = TypeVar("C", bound=BaseModel)


def load_config(path: str | Path, model: type[C]) -> C:
    """Load and validate a YAML config; errors name the file, line and key."""
    from selfimprove.yamlio import load_model

    return load_model(path, model)
