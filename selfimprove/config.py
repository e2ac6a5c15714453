"""Configuration models and the one function that loads them.

Data only: importing this module loads no backend, judge or model code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from selfimprove.models import DEFAULT_MODEL
from selfimprove.training.config import TrainConfig
from selfimprove.types import SamplingParams


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Strategy = Literal["revision", "best_of_n"]


def _ratio_bounds_ordered(low: float | None, high: float | None, what: str) -> None:
    if low is not None and high is not None and low > high:
        raise ValueError(f"min_length_ratio {low} is above max_length_ratio {high}: no {what} "
                         "could pass both")


class HarvestConfig(BaseModel):
    """Which pairs to keep."""

    model_config = ConfigDict(extra="forbid")
    strategies: list[Strategy] = Field(default_factory=lambda: ["revision"], min_length=1)
    min_margin: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="drop pairs whose judge margin (|p_b - 0.5| * 2, or the normalized score "
        "gap for best_of_n) is below this",
    )
    max_length_ratio: float | None = Field(
        default=None,
        gt=0.0,
        description="drop pairs whose chosen side has more than this many times the words "
        "of the rejected side (guards against a judge's length bias)",
    )
    min_length_ratio: float | None = Field(
        default=None,
        gt=0.0,
        description="drop pairs whose chosen side has fewer than this many times the words "
        "of the rejected side (guards DPO against learning that shorter wins)",
    )
    bare_negatives: bool = Field(
        default=False,
        description="with each prompt's first kept pair, one more: the same chosen answer "
        "against an answer made of only the words the prompt's checks ask for (its opening, "
        "required and closing words), which passes those checks and says nothing",
    )
    sft_requires_checks: bool = True
    score_scale: float = Field(
        default=5.0,
        gt=0.0,
        description="the pointwise judge's score range (max - min), used to normalize "
        "best_of_n score gaps into [0, 1]",
    )

    @model_validator(mode="after")
    def _ratios_ordered(self) -> HarvestConfig:
        _ratio_bounds_ordered(self.min_length_ratio, self.max_length_ratio, "pair")
        return self


class GateConfig(BaseModel):
    """Thresholds of the gate; a threshold set to ``None`` is not checked."""

    model_config = ConfigDict(extra="forbid")
    min_win_rate: float | None = Field(
        default=0.4, ge=0.0, le=1.0, description="candidate vs incumbent, ties count half"
    )
    # Rates lie in [0, 1], so a delta below -1 or a relative NLL change below -100% could
    # never pass: refused when the config loads instead of rejecting every candidate.
    max_violation_rate_delta: float | None = Field(
        default=0.0, ge=-1.0, le=1.0,
        description="candidate violation rate minus the incumbent's, at most",
    )
    max_length_ratio: float | None = Field(
        default=1.25, gt=0.0, description="mean words, candidate / incumbent, at most"
    )
    min_length_ratio: float | None = Field(
        default=0.25, ge=0.0, description="mean words, candidate / incumbent, at least"
    )
    max_retention_increase: float | None = Field(
        default=0.05, gt=-1.0, description="relative increase of the retention NLL, at most, "
        "over the lower of the incumbent's and the base's"
    )
    max_repetition_increase: float | None = Field(
        default=0.05, ge=0.0, le=1.0,
        description="share of answers that repeat themselves may rise at most this much over "
        "the lower of the incumbent's and the base's",
    )
    max_truncation_increase: float | None = Field(
        default=0.05, ge=0.0, le=1.0,
        description="share of answers cut at the token cap may rise at most this much",
    )
    max_near_empty_increase: float | None = Field(
        default=0.02, ge=0.0, le=1.0,
        description="share of (near-)empty answers may rise at most this much",
    )
    min_mean_words: float | None = Field(
        default=8.0, ge=0.0, description="the candidate's mean answer length, at least"
    )
    max_kind_drop: float | None = Field(
        default=0.25, ge=0.0, le=1.0,
        description="the pass rate of any one check kind may fall at most this much below the "
        "incumbent's or the base's: a candidate that buys one instruction with another is "
        "different, not better",
    )
    kind_drop_p_value: float | None = Field(
        default=0.1, gt=0.0, le=1.0,
        description="a kind's drop counts for max_kind_drop only where it is beyond chance: "
        "its answers lost against those gained, prompt by prompt, have an exact McNemar "
        "p-value at most this (0.1: five answers lost and none gained; four are not enough). "
        "None: the drop alone decides",
    )
    min_kind_responses: int = Field(
        default=8, ge=1,
        description="a check kind counts for max_kind_drop only where it applied to at least "
        "this many held-out answers (on fewer, one answer moves the rate too far)",
    )
    require_improvement: bool = Field(
        default=True, description="promote only on measured improvement: fewer held-out "
        "violations than the incumbent, or a judge that is not near chance whose win-rate "
        "interval lies above 0.5 (passing every guard alone is 'no worse', not 'better')",
    )
    max_p_value: float | None = Field(
        default=None, gt=0.0, le=1.0,
        description="with require_improvement: fewer violations count as improvement only "
        "where the candidate's gains over the incumbent, prompt by prompt, have an exact "
        "McNemar p-value at most this (e.g. 0.05). Off by default: on a few dozen held-out "
        "prompts only a gain of many prompts reaches it",
    )
    num_prompts: int = Field(default=32, ge=1, description="held-out prompts per evaluation")
    sampling: SamplingParams = Field(
        default_factory=lambda: SamplingParams(max_new_tokens=128, temperature=0.0),
        description="sampling for the evaluation generations (greedy by default)",
    )
    judge_version: Literal["base", "incumbent"] = Field(
        default="base", description="which policy judges when the judge shares the backend"
    )

    @model_validator(mode="after")
    def _ratios_ordered(self) -> GateConfig:
        _ratio_bounds_ordered(self.min_length_ratio, self.max_length_ratio, "candidate")
        return self


class BackendConfig(Strict):
    """Where a role's completions come from."""

    kind: Literal["transformers", "openai", "vllm"] = "transformers"
    model: str = DEFAULT_MODEL
    # local transformers / vLLM
    device: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="transformers: auto is bfloat16 on CPUs that compute it natively (AVX-512 "
        "BF16, AMX), float32 on other CPUs, the checkpoint's dtype on GPUs; float32 answers do "
        "not depend on the batch they were generated in",
    )
    max_batch_size: int = Field(default=32, ge=1)
    max_wait_ms: float = Field(default=20.0, ge=0)
    # in-process vLLM
    switch: Literal["auto", "lora", "merged"] = Field(
        default="auto",
        description="vLLM: serve trained versions as LoRA requests or as merged checkpoints "
        "(an engine per version); auto: merged on a CPU, LoRA on GPUs",
    )
    max_lora_rank: int = Field(default=64, ge=1, description="vLLM: the largest adapter rank")
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="vLLM: more keyword arguments for vllm.LLM (max_model_len, "
        "enable_prefix_caching, kv_cache_memory_bytes, tensor_parallel_size, ...)",
    )
    # OpenAI-compatible HTTP
    base_url: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    timeout_s: float = Field(default=120.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)

    @model_validator(mode="after")
    def _needs_url(self) -> BackendConfig:
        if self.kind == "openai" and not self.base_url:
            raise ValueError("kind 'openai' needs base_url (e.g. http://127.0.0.1:8000/v1)")
        if self.engine_args and self.kind != "vllm":
            raise ValueError(f"engine_args is for kind 'vllm', not {self.kind!r}")
        named = sorted({"model", "dtype", "max_lora_rank", "enable_lora"} & set(self.engine_args))
        if named:
            raise ValueError(
                f"engine_args may not set {', '.join(named)}: use the backend's own keys"
            )
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

    @model_validator(mode="after")
    def _policy_has_a_backend(self) -> RolesConfig:
        # `policy: {sampling: ...}` alone keeps the default backend (other roles share it).
        if self.policy.backend is None:
            self.policy = self.policy.model_copy(update={"backend": BackendConfig()})
        return self


class CritiqueConfig(Strict):
    """Settings of the critique loop."""

    constitution: str = "concise"
    max_rounds: int = Field(default=2, ge=1)
    principles_per_round: int = Field(default=1, ge=1)
    critic: Literal["model", "checks"] = Field(
        default="model",
        description="who writes the critique: the critic model, or (checks) the list of failed "
        "rules, with no critic call and no revision of a response that passes",
    )
    reviser: Literal["model", "repair"] = Field(
        default="model",
        description="who revises: the reviser model, or (repair) the checks first: an extra "
        "sample that passes them, else the failed checks' mechanical fixes where every failed "
        "check has one (lowercase, starts_with, ends_with, bullet_count, paragraph_count, "
        "json_object, quoted, no_commas); the reviser model otherwise",
    )
    num_samples: int = Field(default=0, ge=0, description="extra samples for best-of-N pairs")
    score_samples: bool = Field(
        default=True,
        description="score the best-of-N samples with the pointwise rubric judge; off: the "
        "checks alone rank them (rejection sampling), for verifiable prompts or a weak judge",
    )
    sample_with_examples: bool = Field(
        default=True,
        description="draw the extra samples with the constitution's examples as earlier turns "
        "(context distillation: what is kept trains on the bare prompt); no effect without "
        "examples or samples",
    )
    revision_samples: int = Field(
        default=1, ge=1,
        description="revisions sampled per critique (sampler temperature); the first that "
        "ended on its own and passes the hard checks is kept",
    )
    judge_logprobs: bool = True
    judge_when_checks_decide: bool = Field(
        default=False, description="also ask the judge when the hard checks decide a pair"
    )
    seed: int = Field(default=0, description="seeds the loop's sampling (principles, samples)")
    max_concurrency: int = Field(default=64, ge=1)
    roles: RolesConfig = RolesConfig()


C = TypeVar("C", bound=BaseModel)


def validate_overrides(model: type[C], data: dict, flags: dict[str, str]) -> C:
    """Validate a config with command-line overrides; an invalid value names its flag."""
    from pydantic import ValidationError

    from selfimprove.errors import ConfigError

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        key = ".".join(str(p) for p in err["loc"])
        flag = flags.get(key)
        where = flag or "<config>"
        raise ConfigError(where, f"{err['msg']} (got {err.get('input')!r})",
                          field=None if flag else key) from None


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
    traffic: int = Field(
        default=0, ge=0, description="recorded agent exchanges (``selfimprove serve --record``"
        ", TrafficRecorder) each cycle adds to its batch, oldest first: the answer served is "
        "the first response, critiqued and revised",
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
    train_from: Literal["current", "base"] = Field(
        default="current",
        description="the version each candidate is trained from: the current policy, or the "
        "base model v0 every time (on all data so far; no drift adds up across promotions)",
    )


class LaunchConfig(Strict):
    """Run each training step in processes of its own through ``accelerate launch`` (several
    GPUs, or CPU processes): ``python -m selfimprove.training`` commits the candidate to the
    run's registry exactly as the in-process step does."""

    num_processes: int = Field(default=1, ge=1, description="processes (one per GPU)")
    config_file: Path | None = Field(
        default=None, description="an accelerate config (e.g. examples/accelerate/ddp.yaml); "
        "a relative path is read from the directory `selfimprove run` starts in",
    )
    cpu: bool = Field(default=False, description="train on CPUs (gloo), even where GPUs exist")
    extra_args: list[str] = Field(default_factory=list,
                                  description="more `accelerate launch` flags, as given")
    timeout_s: float = Field(default=6 * 3600, gt=0, description="a training step's limit")

    @field_validator("config_file")
    @classmethod
    def _exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"accelerate config {str(value)!r} not found")
        return None if value is None else value.resolve()


class ControlConfig(Strict):
    """The control arm: the same cycles with the critique replaced by the cheapest thing that
    could explain the result (see :mod:`selfimprove.improvement_cycle.control`)."""

    enabled: bool = Field(default=False, description="run the control arm after the loop")
    kind: Literal["auto", "trim", "best_of_checks"] = Field(
        default="auto", description="auto: trim when the constitution limits words"
    )
    samples: int = Field(default=4, ge=2, description="samples per prompt for best_of_checks")


class ServeConfig(Strict):
    """``selfimprove serve``: an OpenAI-compatible server for a run's current version."""

    host: str = Field(default="127.0.0.1", description="without an API key only a loopback "
                      "address is allowed")
    port: int = Field(default=8000, ge=0, le=65535)
    model_name: str | None = Field(default=None, description="the model id clients ask for "
                                   "(default: the run directory's name)")
    api_key_env: str = Field(default="SELFIMPROVE_API_KEY", description="the environment "
                             "variable holding the API key; unset: no key is asked for")
    record: bool = Field(default=False, description="record every exchange into the run's "
                         "store (for the next cycle)")
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    flush_seconds: float = Field(default=10.0, gt=0, description="how often recorded "
                                 "exchanges move from the journal into the store")


class RunConfig(Strict):
    """Everything ``selfimprove run`` does; every CLI flag maps onto one of these keys."""

    seed: int = Field(
        default=0, description="seeds prompt order, the held-out split and self-generated "
        "prompts (the critique loop has its own critique.seed)",
    )
    cycles: int = Field(default=3, ge=1)
    batch_size: int = Field(default=32, ge=1, description="training prompts per cycle")
    heldout_fraction: float = Field(default=0.3, gt=0, lt=1)
    durable: bool = Field(default=True, description="checkpoint every step synchronously")
    prompts: PromptSource = PromptSource()
    transfer_prompts: list[str] = Field(
        default_factory=list,
        description="prompt sets training never sees (packaged names or JSONL/text files, "
        "prompts may carry checks): after the cycles, v0 and each arm's current version "
        "answer them, and the report shows whether what was trained carried over",
    )
    critique: CritiqueConfig = CritiqueConfig()
    harvest: HarvestConfig = HarvestConfig()
    schedule: Schedule = Schedule()
    dpo: TrainConfig = TrainConfig(method="dpo")
    sft: TrainConfig = TrainConfig(method="sft")
    launch: LaunchConfig | None = Field(
        default=None, description="train through `accelerate launch` (default: in process)"
    )
    gate: GateConfig = GateConfig()
    control: ControlConfig = ControlConfig()
    serve: ServeConfig = ServeConfig()

    @field_validator("harvest")
    @classmethod
    def _best_of_n_has_samples(cls, value: HarvestConfig, info: ValidationInfo
                               ) -> HarvestConfig:
        critique = info.data.get("critique")
        if "best_of_n" in value.strategies and critique is not None and not (
                critique.num_samples):
            raise ValueError("the best_of_n strategy pairs extra samples, and "
                             "critique.num_samples is 0: set it to 2 or more")
        return value

    def train_config(self, method: str) -> TrainConfig:
        """The training settings of ``method`` ('dpo' or 'sft')."""
        return self.dpo if method == "dpo" else self.sft

    @field_validator("dpo", "sft")
    @classmethod
    def _method_matches_key(cls, value: TrainConfig, info: ValidationInfo) -> TrainConfig:
        # Checked per field, so the error names the key and its line in the YAML.
        if value.method != info.field_name:
            raise ValueError(f"{info.field_name}.method must be '{info.field_name}', "
                             f"got '{value.method}'")
        return value
