"""Shared fixtures: one embedded-model backend per test session (loading is the slow part)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def embedded_backend():
    from selfimprove.backends.transformers import TransformersBackend

    backend = TransformersBackend(max_batch_size=32, max_wait_ms=30)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    """A rank-8 LoRA adapter with random (non-zero) weights, so it visibly changes outputs."""
    from peft import LoraConfig, get_peft_model

    from selfimprove.models import load_causal_lm

    model = get_peft_model(
        load_causal_lm(None),
        LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                   init_lora_weights=False),
    )
    path = tmp_path_factory.mktemp("adapter") / "v1"
    model.save_pretrained(path)
    return str(path)
