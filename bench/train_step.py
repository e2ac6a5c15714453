"""DPO step speed and peak memory: LoRA with the adapter-disabled base as reference vs copies.

Variants, each in a fresh subprocess so peak RSS is its own:

- ``lora_shared_ref``: LoRA policy, ``ref_model=None``; the reference is the same base model
  with the adapter disabled (what selfimprove trains with).
- ``lora_copy_ref``: LoRA policy plus an explicit second copy of the base as ``ref_model``
  (isolates the cost of the reference copy).
- ``full_copy_ref``: full fine-tune (no LoRA) plus a separate reference copy (plain DPO).

Prints steps/s and peak RSS per variant. The headline is ``lora_shared_ref`` against
``lora_copy_ref``: the two differ only in the reference model, so that ratio is what the
adapter-off reference saves. Beside it, the ratios against ``full_copy_ref`` (plain DPO; the
memory target is ``lora_shared_ref`` at most 0.6 of it). Writes JSON::

    python bench/train_step.py [--steps 5] [--batch-size 4] [--gradient-checkpointing]
                               [--out bench/results/train_step.json]

Without checkpointing (the CPU default) activation memory, the same in every variant, is a
large share of each peak; the ratios include it.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("lora_shared_ref", "lora_copy_ref", "full_copy_ref")
MEMORY_TARGET = 0.6
TOPICS = [
    "the sea",
    "a cat",
    "rain",
    "coffee",
    "trains",
    "the moon",
    "bread",
    "winter",
    "a forest",
    "music",
    "a river",
    "snow",
    "a city",
    "tea",
    "a garden",
    "the wind",
]


def _pairs() -> list[dict]:
    return [
        {
            "prompt": [{"role": "user", "content": f"Describe {t} in two short sentences."}],
            "chosen": [
                {
                    "role": "assistant",
                    "content": f"{t.capitalize()} is calm and quiet. "
                    "It changes slowly through the day.",
                }
            ],
            "rejected": [
                {
                    "role": "assistant",
                    "content": f"Well, basically, {t} is, you know, "
                    "honestly a really very interesting thing, in a way, sort of, and it "
                    "is, um, basically something that people talk about quite a lot.",
                }
            ],
        }
        for t in TOPICS
    ]


def _peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS
    scale = 1024 * 1024 if platform.system() == "Darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def run_variant(variant: str, steps: int, batch_size: int, checkpointing: bool = False) -> dict:
    """Train ``steps`` DPO steps in this process and measure them."""
    import datasets
    import torch
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from selfimprove.models import load_causal_lm, load_tokenizer
    from selfimprove.training.common import lora_config, prepare_dataset, trl_args
    from selfimprove.training.config import LoraSettings, TrainConfig

    cfg = TrainConfig(
        method="dpo",
        lora=None if variant == "full_copy_ref" else LoraSettings(),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1,
        max_length=256,
        gradient_checkpointing=checkpointing,
        report_to=[],
    )
    rss_imports = _peak_rss_mb()  # torch, transformers, TRL: the same in every variant
    model = load_causal_lm(None)
    tokenizer = load_tokenizer(None)
    ref_model = load_causal_lm(None) if variant in ("lora_copy_ref", "full_copy_ref") else None
    rss_loaded = _peak_rss_mb()

    times: list[float] = []
    cpu: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter())
            usage = resource.getrusage(resource.RUSAGE_SELF)
            cpu.append(usage.ru_utime + usage.ru_stime)

    with tempfile.TemporaryDirectory() as out:
        trainer = DPOTrainer(
            model=model,
            ref_model=ref_model,
            args=DPOConfig(**trl_args(cfg, Path(out), progress=False)),
            train_dataset=prepare_dataset(datasets.Dataset.from_list(_pairs()), "dpo"),
            processing_class=tokenizer,
            peft_config=lora_config(cfg) if cfg.lora is not None else None,
            callbacks=[Clock()],
        )
        trainer.train()
    if len(times) < 2:
        raise SystemExit("--steps must be at least 2 (the first step is not timed)")
    # the first step pays for allocation and warm-up: time the rest
    timed = times[-1] - times[0]
    peak = _peak_rss_mb()
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {
        "variant": variant,
        "gradient_checkpointing": trainer.args.gradient_checkpointing,
        "peak_gpu_mb": None if peak_gpu is None else round(peak_gpu, 1),
        "steps": len(times),
        "batch_size": batch_size,
        "steps_per_s": (len(times) - 1) / timed,
        # CPU seconds per step: less disturbed than wall time when other work shares the CPU
        "cpu_s_per_step": (cpu[-1] - cpu[0]) / (len(times) - 1),
        "peak_rss_mb": round(peak, 1),
        "peak_rss_above_imports_mb": round(peak - rss_imports, 1),
        "rss_after_imports_mb": round(rss_imports, 1),
        "rss_after_load_mb": round(rss_loaded, 1),
        "trainable_params": trainable,
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="DPO steps per variant")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("bench/results/train_step.json"))
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute activations in backward (less memory, slower)",
    )
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args(argv)

    if args.variant:
        result = run_variant(args.variant, args.steps, args.batch_size, args.gradient_checkpointing)
        print(json.dumps(result))
        return 0

    results = {}
    for variant in VARIANTS:
        cmd = [
            sys.executable,
            __file__,
            "--variant",
            variant,
            "--steps",
            str(args.steps),
            "--batch-size",
            str(args.batch_size),
        ]
        if args.gradient_checkpointing:
            cmd.append("--gradient-checkpointing")
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(proc.stderr[-4000:], file=sys.stderr)
            print(f"variant {variant} failed (exit {proc.returncode})", file=sys.stderr)
            return 1
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = results[variant]
        print(
            f"{variant:16s} {r['steps_per_s']:.3f} steps/s  {r['cpu_s_per_step']:.1f} CPU s/step"
            f"  peak RSS {r['peak_rss_mb']:.0f} MB ({r['peak_rss_above_imports_mb']:.0f} MB above"
            f" the libraries), trainable params {r['trainable_params']:,}"
        )

    shared = results["lora_shared_ref"]
    # host RSS on CPU; on a GPU the accelerator's peak allocation is the memory that matters
    memory_key = "peak_rss_mb" if shared["peak_gpu_mb"] is None else "peak_gpu_mb"
    ratios = {}
    for other in ("full_copy_ref", "lora_copy_ref"):
        ratios[f"steps_per_s_lora_shared_vs_{other}"] = (
            shared["steps_per_s"] / results[other]["steps_per_s"]
        )
        ratios[f"cpu_s_per_step_lora_shared_vs_{other}"] = (
            shared["cpu_s_per_step"] / results[other]["cpu_s_per_step"]
        )
        ratios[f"peak_memory_lora_shared_vs_{other}"] = (
            shared[memory_key] / results[other][memory_key]
        )
        if memory_key == "peak_rss_mb":
            ratios[f"peak_memory_above_imports_lora_shared_vs_{other}"] = (
                shared["peak_rss_above_imports_mb"] / results[other]["peak_rss_above_imports_mb"]
            )
    headline = {k: v for k, v in ratios.items() if k.endswith("lora_copy_ref")}
    print("headline: the adapter-off reference vs a copied reference (only the reference "
          "differs)")
    for name, value in headline.items():
        print(f"  {name:55s} {value:.2f}")
    print("against plain DPO (full fine-tune with a reference copy):")
    for name, value in ratios.items():
        if name not in headline:
            print(f"  {name:55s} {value:.2f}")
    meets = ratios["peak_memory_lora_shared_vs_full_copy_ref"] <= MEMORY_TARGET
    print(f"memory target (<= {MEMORY_TARGET}): {'met' if meets else 'NOT met'}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "dpo_train_step",
        "model": "smollm2-135m-instruct (fp32)",
        "device": "cuda" if _cuda() else "cpu",
        "steps": args.steps,
        "batch_size": args.batch_size,
        "gradient_checkpointing": args.gradient_checkpointing,
        "variants": results,
        "headline": "lora_shared_ref vs lora_copy_ref (isolates the reference model)",
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "memory_measure": memory_key,
        "memory_target": MEMORY_TARGET,
        "memory_target_met": meets,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
