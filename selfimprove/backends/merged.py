"""Trained versions as full checkpoints: a LoRA adapter merged into its base model, on disk.

An engine without LoRA support serves a merged checkpoint at the base model's speed; on a
CPU, vLLM with LoRA enabled served adapters at 0.51x and even the bare base at 0.66x of an
engine without it (bench/vllm_throughput.py).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock

from selfimprove.models import cache_dir, load_causal_lm, load_tokenizer, resolve_model
from selfimprove.types import PolicyRef

__all__ = ["merged_checkpoint"]


def merged_checkpoint(policy: PolicyRef) -> str:
    """The directory of ``policy``'s adapter merged into its base (made once, then reused).

    Keyed by the adapter's resolved path and its weights' modification time, so a new adapter
    at the same path is merged anew. Written to a temporary directory and renamed, under a
    file lock: a killed merge leaves nothing that looks complete.
    """
    assert policy.adapter_path is not None
    adapter = Path(policy.adapter_path).resolve()
    weights = max(adapter.glob("adapter_model.*"), key=os.path.getmtime, default=adapter)
    key = f"{adapter}|{os.path.getmtime(weights)}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    root = cache_dir() / "merged"
    target = root / f"{policy.version}-{digest}"
    if (target / "config.json").is_file():
        return str(target)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock", thread_local=False):
        if (target / "config.json").is_file():
            return str(target)
        from peft import PeftModel

        base = resolve_model(policy.base_model)
        model = PeftModel.from_pretrained(load_causal_lm(base, dtype="float32"), str(adapter))
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
        try:
            model.merge_and_unload().save_pretrained(staging)
            load_tokenizer(base).save_pretrained(staging)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return str(target)
