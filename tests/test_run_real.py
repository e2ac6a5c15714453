"""A short `selfimprove run` on the embedded model, killed once with SIGKILL and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from selfimprove.registry import PolicyRegistry
from selfimprove.rundir import RunDir
from selfimprove.store import PreferenceStore

pytestmark = pytest.mark.slow

CONFIG = """
seed: 1
cycles: 1
batch_size: 4
heldout_fraction: 0.5
prompts: {path: PROMPTS}
transfer_prompts: [TRANSFER]
critique:
  constitution: concise
  max_rounds: 1
  roles:
    policy: {backend: {kind: transformers}, sampling: {max_new_tokens: 32}}
    critic: {sampling: {max_new_tokens: 16}}
    reviser: {sampling: {max_new_tokens: 96}}
  revision_samples: 3
harvest: {strategies: [revision]}
schedule: {every_cycles: 1, min_new_pairs: 1, methods: [sft]}
sft: {method: sft, max_steps: 2, per_device_train_batch_size: 2, gradient_accumulation_steps: 1,
      max_length: 96, report_to: []}
gate: {num_prompts: 3, sampling: {max_new_tokens: 24}}
"""

# Unseen prompts that bring their own checks, answered after the cycle.
UNSEEN = [{"prompt": "Name a colour. Answer in lowercase.", "checks": [{"kind": "lowercase"}]},
          {"prompt": "Say hello.", "checks": [{"kind": "max_words", "value": 20}]}]
PROMPTS = ["What is rain?", "Name a fruit.", "What is a cat?", "Why is grass green?",
           "What is bread?", "How do fish breathe?", "What is snow?", "What is a tree?"]


def cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "selfimprove", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})


def test_run_killed_and_resumed_on_embedded_model(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    config = tmp_path / "run.yaml"
    unseen = tmp_path / "unseen.jsonl"
    unseen.write_text("".join(json.dumps(r) + "\n" for r in UNSEEN))
    config.write_text(CONFIG.replace("PROMPTS", str(prompts)).replace("TRANSFER", str(unseen)))
    run_dir = tmp_path / "run"

    proc = cli("run", "--config", str(config), "--run-dir", str(run_dir))
    shard = run_dir / "store" / "log" / "cycle-0001.json"
    deadline = time.monotonic() + 600
    while not shard.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)  # after the harvest, before or during training
    proc.wait()
    hashes_at_kill = PreferenceStore(run_dir, readonly=True).row_hashes()

    resumed = cli("run", "--resume", str(run_dir))
    out, _ = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, out.decode()[-3000:]

    store = PreferenceStore(run_dir, readonly=True)
    assert store.row_hashes() == hashes_at_kill  # the harvest was not repeated
    assert len(store.sft_dataset()) > 0
    reg = PolicyRegistry(run_dir)
    versions = [r.version for r in reg.versions()]
    assert versions == ["v0", "v1"]  # trained once
    assert reg.get("v1").adapter_path and reg.record("v1").evals
    record = json.loads((run_dir / "cycles" / "cycle-0001.json").read_text())
    assert record["eval"]["candidate"]["n_prompts"] == 3
    # The gate's default thresholds decide; whatever they decided, every record agrees.
    passed = record["eval"]["passed"]
    assert record["decision"] == ("promoted" if passed else "rejected")
    assert reg.current_version() == ("v1" if passed else "v0")
    assert reg.record("v1").status == ("promoted" if passed else "rejected")
    assert passed or record["reasons"] == record["eval"]["reasons"] != []
    report = (run_dir / "report.md").read_text()
    assert record["decision"] in report and "v1" in report
    plots = list((run_dir / "plots").glob("*.png"))
    assert plots and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)

    # the unseen prompts, answered by v0 and the current version after the cycle
    current = reg.current_version()
    saved = RunDir(run_dir).transfer_sets()["unseen"]
    assert [e.version for e in saved] == list(dict.fromkeys(["v0", current]))
    assert all(e.n_prompts == 2 and set(e.kind_pass_rates) >= {"lowercase", "max_words"}
               for e in saved)
    assert "### unseen" in report

    # a finished run evaluated on another set later, kept whole (more prompts than the gate's
    # 3) beside the first
    later = tmp_path / "later.jsonl"
    asked = ["Name a month.", "Name a river.", "Name a bird.", "Name a tool."]
    later.write_text("".join(json.dumps({"prompt": p, "checks": [{"kind": "ends_with",
                                                                  "value": "."}]}) + "\n"
                             for p in asked))
    evaluated = cli("eval", str(run_dir), "--prompts", str(later), "--versions", "v0,v1",
                    "--save")
    out, _ = evaluated.communicate(timeout=600)
    assert evaluated.returncode == 0, out.decode()[-3000:]
    assert RunDir(run_dir).load_transfer("later", "v0").prompts == asked
    # v1 against v0 prompt by prompt, whether or not it was promoted
    passes = [sum(RunDir(run_dir).load_transfer("later", v).passes_checks) for v in ("v0", "v1")]
    assert f"passes every check: v1 {passes[1]} vs v0 {passes[0]} of 4 (gained" in out.decode()
    assert "### later" in (run_dir / "report.md").read_text()
