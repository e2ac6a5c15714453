"""A deterministic improvement cycle for tests: scripted policy/judge and a fake trainer.

The policy's answer depends on the version it serves: v0 rambles (fails the word limit),
v1 is short, v2 rambles again. Revisions are short, so cycle 1 harvests pairs, v1 passes
the gate and v2 fails it. The "trainer" writes a real-looking adapter directory.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from selfimprove.backends.scripted import ScriptedBackend
from selfimprove.config import RunConfig
from selfimprove.roles import Roles
from selfimprove.training.common import TrainResult

CONSTITUTION = """
name: tiny
version: 1
description: test constitution
principles:
  - id: brief
    critique: Is it brief?
    revision: Make it brief.
checks:
  - id: max_12_words
    kind: max_words
    value: 12
judge:
  pairwise: Pick the better response.
  pointwise:
    - points: 1
      criterion: It is brief.
"""

# Both read like answers (no repetition, not near-empty, above the gate's length floor);
# only LONG breaks the 12-word limit.
LONG = ("This answer goes on for far too long, well past what the rule allows anyone "
        "to write here.")
SHORT = "A short answer that still says everything it needs to."
PROMPTS = [f"question number {i}?" for i in range(24)]


def write_inputs(root: Path) -> Path:
    """Write the constitution, prompts and run config under ``root``; return the config."""
    (root / "tiny.yaml").write_text(CONSTITUTION)
    with (root / "prompts.jsonl").open("w") as f:
        for i, p in enumerate(PROMPTS):
            f.write(json.dumps({"id": f"q{i:02d}", "prompt": p}) + "\n")
    cfg = {
        "seed": 3,
        "cycles": 3,
        "batch_size": 6,
        "heldout_fraction": 0.3,
        "prompts": {"path": str(root / "prompts.jsonl")},
        "critique": {"constitution": str(root / "tiny.yaml"), "max_rounds": 2},
        "harvest": {"strategies": ["revision"]},
        "schedule": {"every_cycles": 1, "min_new_pairs": 1, "methods": ["dpo"]},
        "gate": {"num_prompts": 5, "max_retention_increase": None},
    }
    path = root / "run.yaml"
    path.write_text(json.dumps(cfg))
    return path


def load_cfg(path: Path) -> RunConfig:
    from selfimprove.config import load_config

    return load_config(path, RunConfig)


def make_backend() -> ScriptedBackend:
    backend: ScriptedBackend

    def respond(conv, params) -> str:
        text = conv[-1].content
        if "Critique request" in text:
            return "Too long."
        if "Revision request" in text:
            return SHORT
        return SHORT if backend.policy.version == "v1" else LONG

    def score(conv, options):
        text = conv[-1].content
        a_part = text.split("Response A:")[1].split("Response B:")[0]
        a_short = SHORT in a_part
        return {"A": math.log(0.8 if a_short else 0.2), "B": math.log(0.2 if a_short else 0.8)}

    backend = ScriptedBackend(respond, score)
    return backend


def make_roles() -> Roles:
    return Roles(policy=make_backend())


def fake_trainer(method, base_model, parent, dataset, cfg, output_dir, progress=False):
    adapter = Path(output_dir) / "adapter"
    adapter.mkdir(parents=True, exist_ok=True)
    (adapter / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": base_model, "peft_type": "LORA"})
    )
    (adapter / "adapter_model.safetensors").write_bytes(b"fake weights " + parent.version.encode())
    return TrainResult(adapter_dir=adapter,
                       metrics={"train_loss": 0.5, "steps": 2.0, "rows": float(len(dataset))})
