"""Training settings: one pydantic model for SFT and DPO, with pass-through TRL arguments.

``trl_args`` reaches :class:`trl.DPOConfig` / :class:`trl.SFTConfig` unchanged, but its keys are
checked when the config is loaded, so a typo fails before a model is loaded, not after.
"""

from __future__ import annotations

import dataclasses
import math
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

Method = Literal["dpo", "sft"]

#: TRL arguments this package sets itself; setting them through ``trl_args`` would be ignored or
#: would break the staging/registry contract, so they are refused.
RESERVED_TRL_ARGS = frozenset({"output_dir", "disable_tqdm"})
#: TRL names for our settings under another name (transformers 5 renamed the first)
TRL_ALIASES = {"activation_checkpointing": "gradient_checkpointing"}


class LoraSettings(BaseModel):
    """LoRA adapter shape (PEFT ``LoraConfig``)."""

    model_config = ConfigDict(extra="forbid")
    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )


class TrainConfig(BaseModel):
    """How to train one policy version. Defaults are sized to move a 135M model on a CPU.

    ``lora=None`` means a full fine-tune (the whole model is saved, not an adapter). When the
    parent policy has an adapter, training continues that adapter and keeps its shape; ``lora``
    then only says "LoRA" (a full fine-tune merges the parent's adapter first).
    ``learning_rate=None`` picks 2e-4 with LoRA and 1e-5 for a full fine-tune.
    """

    model_config = ConfigDict(extra="forbid")

    method: Method = "dpo"
    lora: LoraSettings | None = Field(default_factory=LoraSettings)
    learning_rate: float | None = Field(default=None, gt=0)
    max_steps: int | None = Field(
        default=None, ge=1, description="stop after this many optimizer steps (None: epochs)"
    )
    num_train_epochs: float = Field(default=2.0, gt=0)
    max_epochs: float | None = Field(
        default=None, gt=0,
        description="with max_steps: at most this many passes over the rows, so a handful of "
        "rows is not trained on for max_steps steps (per process; None: no cap)",
    )
    per_device_train_batch_size: int = Field(default=4, ge=1)
    gradient_accumulation_steps: int = Field(default=2, ge=1)
    beta: float = Field(default=0.1, gt=0, description="DPO temperature (ignored by SFT)")
    max_length: int = Field(default=512, ge=16, description="prompt + reply tokens")
    seed: int = 0
    logging_steps: int = Field(default=1, ge=1)
    gradient_checkpointing: bool = Field(
        default=False, description="saves memory on large models; slower on small ones"
    )
    report_to: list[str] = Field(default_factory=lambda: ["tensorboard"])
    trl_args: dict[str, Any] = Field(
        default_factory=dict, description="extra DPOConfig/SFTConfig arguments, passed through"
    )

    @field_validator("trl_args")
    @classmethod
    def _check_trl_args(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if not value:
            return value
        method = info.data.get("method", "dpo")
        ours = set(cls.model_fields) - {"trl_args", "lora", "method"}
        for key in value:
            if key in ours or key in TRL_ALIASES:
                setting = TRL_ALIASES.get(key, key)
                raise ValueError(
                    f"trl_args key '{key}' duplicates the setting '{setting}': set it there instead"
                )
            if key in RESERVED_TRL_ARGS:
                raise ValueError(f"trl_args key '{key}' is set by selfimprove; it cannot be set")
            if key not in trl_field_names(method):
                raise ValueError(
                    f"trl_args key '{key}' is not an argument of "
                    f"{'DPOConfig' if method == 'dpo' else 'SFTConfig'}"
                )
        return value

    @property
    def effective_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 2e-4 if self.lora is not None else 1e-5

    def for_rows(self, rows: int) -> TrainConfig:
        """This config with ``max_steps`` capped at ``max_epochs`` passes over ``rows``."""
        if self.max_epochs is None or self.max_steps is None:
            return self
        per_step = self.per_device_train_batch_size * self.gradient_accumulation_steps
        cap = max(1, math.ceil(self.max_epochs * rows / per_step))
        return self if cap >= self.max_steps else self.model_copy(update={"max_steps": cap})

    def trl_kwargs(self) -> dict[str, Any]:
        """Arguments for ``DPOConfig``/``SFTConfig`` (without output and logging paths)."""
        kwargs: dict[str, Any] = {
            "learning_rate": self.effective_learning_rate,
            "max_steps": self.max_steps if self.max_steps is not None else -1,
            "num_train_epochs": self.num_train_epochs,
            "per_device_train_batch_size": self.per_device_train_batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "max_length": self.max_length,
            "seed": self.seed,
            "logging_steps": self.logging_steps,
            "gradient_checkpointing": self.gradient_checkpointing,
            "report_to": list(self.report_to) or "none",
            # the registry owns the saved artifact; intermediate checkpoints are opt-in
            "save_strategy": "no",
        }
        if self.method == "dpo":
            kwargs["beta"] = self.beta
        kwargs.update(self.trl_args)
        return kwargs


@cache
def trl_field_names(method: Method) -> frozenset[str]:
    """Names accepted by TRL's config dataclass for ``method`` (imports TRL: slow)."""
    if method == "dpo":
        from trl import DPOConfig as cls
    else:
        from trl import SFTConfig as cls
    return frozenset(f.name for f in dataclasses.fields(cls) if f.init)


def load_train_config(
    path: str | Path | None, method: Method, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Read a YAML training config (or the defaults), force ``method``, apply ``overrides``.

    ``overrides`` are the CLI flags that were given (``None`` values are skipped). Errors are
    :class:`~selfimprove.errors.ConfigError` naming the file, line and field.
    """
    from selfimprove.errors import ConfigError
    from selfimprove.yamlio import load_model, read_yaml

    data: dict[str, Any] = {}
    node = None
    where = path if path is not None else "<defaults>"
    if path is not None:
        raw, node = read_yaml(path)
        if raw is not None and not isinstance(raw, dict):
            kind = type(raw).__name__
            raise ConfigError(path, f"expected a mapping at the top level, got {kind}", line=1)
        data = dict(raw or {})
        if data.get("method", method) != method:
            raise ConfigError(
                path, f"this config is for '{data['method']}', not '{method}'", field="method"
            )
    data["method"] = method
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    data.update(given)
    try:
        return load_model(where, TrainConfig, data=data, node=node)
    except ConfigError as exc:
        if exc.field not in given:
            raise
        # the value came from a flag, not from the file: name the flag
        raise ConfigError(f"--{exc.field.replace('_', '-')}", exc.detail) from None
