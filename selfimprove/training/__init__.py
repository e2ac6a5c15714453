"""SFT and DPO training with TRL and PEFT LoRA, into the policy registry.

Importing this package is cheap; torch, TRL and PEFT load when training starts.

- :func:`train_dpo` / :func:`train_sft`: train from a parent policy into a directory.
- :func:`train_policy`: the same into a :class:`~selfimprove.registry.PolicyRegistry`
  (staging directory, commit, optional promotion).
- ``python -m selfimprove.training`` runs it from the command line, and under
  ``accelerate launch -m selfimprove.training`` on several GPUs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from selfimprove.training.config import LoraSettings, TrainConfig, load_train_config

if TYPE_CHECKING:
    from selfimprove.training.common import TrainResult
    from selfimprove.training.dpo import train_dpo
    from selfimprove.training.policy import load_store_data, train_policy
    from selfimprove.training.sft import train_sft

__all__ = [
    "LoraSettings",
    "TrainConfig",
    "TrainResult",
    "load_store_data",
    "load_train_config",
    "train_dpo",
    "train_policy",
    "train_sft",
]

_LAZY = {
    "TrainResult": "selfimprove.training.common",
    "train_dpo": "selfimprove.training.dpo",
    "train_sft": "selfimprove.training.sft",
    "train_policy": "selfimprove.training.policy",
    "load_store_data": "selfimprove.training.policy",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'selfimprove.training' has no attribute '{name}'")
