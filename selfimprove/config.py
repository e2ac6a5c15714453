"""Configuration models and the one function that loads them, plus the backend factory."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from selfimprove.evaluate import GateConfig
from selfimprove.harvest import HarvestConfig
from selfimprove.models import DEFAULT_MODEL
from selfimprove.training.config import TrainConfig
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
    judge_when_checks_decide: bool = Field(
        default=False, description="also ask the judge when the hard checks decide a pair"
    )
    seed: int = 0
    max_concurrency: int = Field(default=64, ge=1)
    roles: RolesConfig = RolesConfig()


C = TypeVar("C", bound=BaseModel)


def load_config(path: str | Path, model: type[C]) -> C:
    """Load and validate a YAML config; errors name the file, line and key."""
    from selfimprove.yamlio import load_model

    return load_model(path, model)


class PromptSource(Strict):
    """Where a run's prompts come from: a JSONL/text file, or a `datasets` dataset."""

    path: str | None = "general"
    dataset: str | None = Field(default=None, description="local datasets dir or hub id")
    split: str = "train"
    field: str = "prompt"
    self_generated: int = Field(
        default=0, ge=0, description="new prompts the policy writes each cycle (deduplicated)"
    )

    @model_validator(mode="after")
    def _one_source(self) -> PromptSource:
        if (self.path is None) == (self.dataset is None):
            raise ValueError("set exactly one of 'path' and 'dataset'")
        return self


class Schedule(Strict):
    """When to train: every ``every_cycles`` cycles, or as soon as enough new pairs arrived."""

    every_cycles: int = Field(default=1, ge=1)
    min_new_pairs: int = Field(default=8, ge=1)
    methods: list[Literal["dpo", "sft"]] = Field(default_factory=lambda: ["dpo"], min_length=1)




class RunConfig(Strict):
    """Everything ``selfimprove run`` does; every CLI flag maps onto one of these keys."""

    seed: int = 0
    cycles: int = Field(default=3, ge=1)
    batch_size: int = Field(default=32, ge=1, description="training prompts per cycle")
    heldout_fraction: float = Field(default=0.3, gt=0, lt=1)
    durable: bool = Field(default=True, description="checkpoint every step synchronously")
    prompts: PromptSource = PromptSource()
    critique: CritiqueConfig = CritiqueConfig()
    harvest: HarvestConfig = HarvestConfig()
    schedule: Schedule = Schedule()
    dpo: TrainConfig = TrainConfig(method="dpo")
    sft: TrainConfig = TrainConfig(method="sft")
    gate: GateConfig = GateConfig()

    @model_validator(mode="after")
    def _methods_match(self) -> RunConfig:
        if self.dpo.method != "dpo" or self.sft.method != "sft":
            raise ValueError("dpo.method must be 'dpo' and sft.method must be 'sft'")
        return self
