"""Supervised fine-tuning on final revisions with TRL's ``SFTTrainer`` (LoRA by default)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from selfimprove.training.common import TrainResult, build_model, prepare_dataset, run_trainer
from selfimprove.training.common import trl_args as _trl_args
from selfimprove.training.config import TrainConfig
from selfimprove.types import PolicyRef

if TYPE_CHECKING:
    import datasets


def train_sft(
    base_model: str,
    parent: PolicyRef,
    dataset: datasets.Dataset,
    cfg: TrainConfig,
    output_dir: Path,
    progress: bool = True,
) -> TrainResult:
    """Train ``parent`` on ``messages`` rows (loss on the final assistant reply only)."""
    from trl import SFTConfig, SFTTrainer

    if cfg.method != "sft":
        raise ValueError(f"train_sft needs a config with method 'sft', got '{cfg.method}'")
    output_dir = Path(output_dir)
    data = prepare_dataset(dataset, "sft")
    model, tokenizer, peft_config = build_model(base_model, parent, cfg)
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(**_trl_args(cfg, output_dir, progress)),
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    return run_trainer(trainer, cfg, base_model, output_dir, rows=len(data))
