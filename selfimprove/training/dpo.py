"""DPO on preference pairs with TRL's ``DPOTrainer`` (LoRA by default)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from selfimprove.training.common import TrainResult, build_model, prepare_dataset, run_trainer
from selfimprove.training.common import trl_args as _trl_args
from selfimprove.training.config import TrainConfig
from selfimprove.types import PolicyRef

if TYPE_CHECKING:
    import datasets


def train_dpo(
    base_model: str,
    parent: PolicyRef,
    dataset: datasets.Dataset,
    cfg: TrainConfig,
    output_dir: Path,
    progress: bool = True,
) -> TrainResult:
    """Train ``parent`` on ``prompt``/``chosen``/``rejected`` rows; write into ``output_dir``.

    The reference model is the parent itself: the base with the adapter disabled for a fresh
    adapter, a frozen copy of the parent's adapter otherwise, or (full fine-tune) a second
    copy of the starting model.
    """
    from trl import DPOConfig, DPOTrainer

    if cfg.method != "dpo":
        raise ValueError(f"train_dpo needs a config with method 'dpo', got '{cfg.method}'")
    output_dir = Path(output_dir)
    data = prepare_dataset(dataset, "dpo")
    model, tokenizer, peft_config = build_model(base_model, parent, cfg)
    # A full fine-tune needs its own reference: a second copy of the starting point (TRL would
    # otherwise reload the base from the config path, losing a merged parent adapter).
    ref_model = build_model(base_model, parent, cfg)[0] if cfg.lora is None else None
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=DPOConfig(**_trl_args(cfg, output_dir, progress)),
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    return run_trainer(trainer, cfg, base_model, output_dir, rows=len(data))
