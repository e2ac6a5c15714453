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


#: Test files in falling order of their run time on the 2-core CPU (`--durations`): `make test`
#: hands whole files to two processes in collection order (`--no-loadscope-reorder`; xdist's own
#: order, most tests first, left the slowest files for last, run by one process while the other
#: sat idle). Longest first, the shorter ones fill in.
SLOWEST_FIRST = (
    "test_vllm_backend.py", "test_improvement_real.py", "test_serve_real.py",
    "test_run_real.py", "test_resume.py", "test_hardening.py", "test_langgraph_server.py",
    "test_training.py", "test_vllm_serve.py", "test_critique_real.py",
    "test_transformers_backend.py", "test_models.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole
