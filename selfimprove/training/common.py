"""What SFT and DPO share: data preparation, model loading, the run itself and its result.

The trainers see only TRL's conversational columns; provenance columns from the store are
dropped here. Training writes into ``output_dir`` (the registry's staging directory):
``adapter/`` (LoRA) or ``model/`` (full fine-tune), and TensorBoard logs in ``tb/``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from selfimprove.adapters import read_adapter_config
from selfimprove.errors import PolicyError
from selfimprove.training.config import Method, TrainConfig, trl_field_names
from selfimprove.types import PolicyRef

if TYPE_CHECKING:
    import datasets

ADAPTER_DIR = "adapter"
MODEL_DIR = "model"
TB_DIR = "tb"

#: the columns each trainer reads; everything else is provenance
TRL_COLUMNS: dict[Method, tuple[str, ...]] = {
    "dpo": ("prompt", "chosen", "rejected"),
    "sft": ("prompt", "completion"),
}


class TrainResult(BaseModel):
    """Where the trained weights are and how training went."""

    adapter_dir: Path = Field(description="adapter/ (LoRA) or model/ (full fine-tune)")
    metrics: dict[str, float]
    log_history: list[dict[str, Any]] = Field(default_factory=list)


def prepare_dataset(dataset: datasets.Dataset, method: Method) -> datasets.Dataset:
    """Keep only the columns the TRL trainer for ``method`` reads.

    SFT rows arrive as ``messages`` (user ..., assistant); they become ``prompt`` (all but the
    last message) and ``completion`` (the last, an assistant reply) so the loss covers only
    the reply.
    """
    columns = set(dataset.column_names)
    if method == "sft" and "messages" in columns and not {"prompt", "completion"} <= columns:
        dataset = dataset.map(_split_messages, remove_columns=["messages"])
        columns = set(dataset.column_names)
    needed = TRL_COLUMNS[method]
    missing = [c for c in needed if c not in columns]
    if missing:
        raise ValueError(
            f"{method} training data lacks the column(s) {missing}; it has {sorted(columns)}"
        )
    if len(dataset) == 0:
        raise ValueError(f"{method} training data is empty")
    return dataset.select_columns(list(needed))


def _split_messages(row: dict[str, Any]) -> dict[str, Any]:
    messages = row["messages"]
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise ValueError(
            "an SFT row must end with an assistant message after at least one other message; "
            f"got roles {[m['role'] for m in messages]}"
        )
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def check_parent(base_model: str, parent: PolicyRef) -> None:
    """The parent's weights must apply to ``base_model`` (else training silently drops them)."""
    if parent.base_model != base_model:
        raise PolicyError(
            f"policy {parent.version} applies to base model '{parent.base_model}', "
            f"but training was asked to use '{base_model}'; pass the parent's base model"
        )


def lora_config(cfg: TrainConfig):
    from peft import LoraConfig

    assert cfg.lora is not None
    return LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        task_type="CAUSAL_LM",
    )


def build_model(base_model: str, parent: PolicyRef, cfg: TrainConfig):
    """Load what training starts from: ``(model, tokenizer, peft_config)``.

    - LoRA, parent with an adapter: the parent's adapter, trainable; TRL keeps a frozen copy of
      it as the DPO reference (the reference is the parent policy).
    - LoRA, parent without one: the base plus ``peft_config`` for the trainer to attach a fresh
      adapter; the DPO reference is then the base with the adapter disabled (no second copy).
    - Full fine-tune: the base, with the parent's adapter merged in when it has one.
    """
    from selfimprove.models import load_causal_lm, load_tokenizer

    check_parent(base_model, parent)
    # float32 weights: the optimizer updates them; bfloat16 is only the compute (trl_args).
    model = load_causal_lm(base_model, dtype="float32")
    tokenizer = load_tokenizer(base_model)
    if parent.adapter_path is not None:
        from peft import PeftModel

        path = Path(parent.adapter_path)
        read_adapter_config(path, parent.version)
        if cfg.lora is None:
            return PeftModel.from_pretrained(model, str(path)).merge_and_unload(), tokenizer, None
        peft_model = PeftModel.from_pretrained(model, str(path), is_trainable=True)
        # Saved adapters name the base by its model argument; while training, point PEFT at the
        # resolved directory so saving does not look the name up on the hub.
        peft_model.peft_config["default"].base_model_name_or_path = model.config.name_or_path
        return peft_model, tokenizer, None
    return model, tokenizer, (lora_config(cfg) if cfg.lora is not None else None)


def trl_args(cfg: TrainConfig, output_dir: Path, progress: bool) -> dict[str, Any]:
    """Keyword arguments for ``DPOConfig``/``SFTConfig``."""
    import torch

    kwargs = cfg.trl_kwargs()
    if "activation_checkpointing" in trl_field_names(cfg.method):
        kwargs["activation_checkpointing"] = kwargs.pop("gradient_checkpointing")
    kwargs["output_dir"] = str(output_dir)
    kwargs["disable_tqdm"] = not progress
    kwargs.setdefault("dataloader_pin_memory", torch.cuda.is_available())
    # TRL turns bf16 on unless told otherwise; on CPUs it stays off even where the CPU computes
    # bfloat16 natively: there a DPO step took 6.6 s against 10.2 s, but on the same pairs the
    # loss fell more slowly (1.52 against 1.39 after two steps, 1.02 against 0.99 after five).
    if "bf16" not in cfg.trl_args and "fp16" not in cfg.trl_args:
        kwargs["bf16"] = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if kwargs.get("bf16") and not torch.cuda.is_available():
        kwargs.setdefault("use_cpu", True)  # transformers refuses bf16 on a CPU without it
    # TensorBoard is attached by run_trainer with our log directory (transformers would pick one
    # from an environment variable or a timestamped folder).
    report_to = [r for r in cfg.report_to if r != "tensorboard"]
    kwargs["report_to"] = report_to or "none"
    return kwargs


def run_trainer(
    trainer, cfg: TrainConfig, base_model: str, output_dir: Path, rows: int
) -> TrainResult:
    """Train, save the adapter (or model) under ``output_dir``, and summarise the logs."""
    import shutil

    if "tensorboard" in cfg.report_to:
        from transformers.integrations import TensorBoardCallback

        callback = TensorBoardCallback()
        callback.logging_dir = str(output_dir / TB_DIR)
        trainer.add_callback(callback)
    if trainer.args.disable_tqdm:
        # Without progress bars transformers prints every log dict instead; keep quiet too.
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)

    trainer.train()
    target = output_dir / (ADAPTER_DIR if cfg.lora is not None else MODEL_DIR)
    trainer.save_model(str(target))
    if trainer.accelerator.is_main_process:
        # TRL trains a PEFT parent next to a frozen copy named "ref"; it is not part of the policy.
        shutil.rmtree(target / "ref", ignore_errors=True)
        (target / "training_args.bin").unlink(missing_ok=True)
        if cfg.lora is not None:
            _name_base_model(target, base_model)
    trainer.accelerator.wait_for_everyone()
    history = list(trainer.state.log_history)
    return TrainResult(
        adapter_dir=target,
        metrics=summarise(history, steps=trainer.state.global_step, rows=rows),
        log_history=history,
    )


def _name_base_model(adapter_dir: Path, base_model: str) -> None:
    """Record the model argument (not a resolved cache path) as the adapter's base model."""
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = base_model
    path.write_text(json.dumps(config, indent=2, sort_keys=True))


def summarise(history: list[dict[str, Any]], steps: int, rows: int) -> dict[str, float]:
    """Final loss, runtime, and the DPO reward statistics averaged over the logged steps."""
    logged = [h for h in history if "loss" in h and "train_runtime" not in h]
    summary = next((h for h in reversed(history) if "train_runtime" in h), {})
    metrics: dict[str, float] = {"steps": float(steps), "rows": float(rows)}
    if "train_loss" in summary:
        metrics["train_loss"] = float(summary["train_loss"])
    if "train_runtime" in summary:
        metrics["runtime_s"] = float(summary["train_runtime"])
    if logged:
        metrics["first_loss"] = float(logged[0]["loss"])
        metrics["final_loss"] = float(logged[-1]["loss"])
    for key in (
        "rewards/margins",
        "rewards/accuracies",
        "rewards/chosen",
        "rewards/rejected",
        "mean_token_accuracy",
    ):
        values = [float(h[key]) for h in logged if key in h and math.isfinite(float(h[key]))]
        if values:
            metrics[key.replace("/", "_")] = sum(values) / len(values)
    return metrics
