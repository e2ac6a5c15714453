"""Model resolution: the embedded default (converted once, process-safe), paths, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from selfimprove.errors import ModelNotFoundError
from selfimprove.models import EMBEDDED_NAME, resolve_model


def test_missing_local_directory_says_what_was_tried(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model(str(missing))
    msg = str(info.value)
    assert str(missing) in msg and "local directory" in msg and EMBEDDED_NAME in msg


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_hub_ids_pass_through_unchanged():
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == (
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    )


def test_unreachable_hub_model_is_a_clear_error(monkeypatch):
    from selfimprove.models import load_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        load_tokenizer("no-such-org/no-such-model")
    msg = str(info.value)
    assert "no-such-org/no-such-model" in msg and "hub could not provide it" in msg


CONVERT = """
import sys
from selfimprove.models import embedded_model_dir
print(embedded_model_dir())
"""


@pytest.mark.slow
def test_two_processes_converting_at_once_share_one_intact_model(tmp_path):
    env = {**os.environ, "SELFIMPROVE_CACHE": str(tmp_path / "cache")}
    procs = [
        subprocess.Popen([sys.executable, "-c", CONVERT], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e.decode()[-2000:] for _, e in outs]
    dirs = {o.decode().strip().splitlines()[-1] for o, _ in outs}
    assert len(dirs) == 1
    model_dir = tmp_path / "cache" / "models" / EMBEDDED_NAME
    assert str(model_dir) in dirs
    assert (model_dir / "COMPLETE").is_file() and (model_dir / "model.safetensors").is_file()
    # no temporary conversion directory is left behind
    assert [p.name for p in model_dir.parent.iterdir() if p.name.startswith(".convert-")] == []

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert getattr(model, "hf_quantizer", None) is None  # trainable, not marked quantized
    assert sum(p.numel() for p in model.parameters()) > 100_000_000
