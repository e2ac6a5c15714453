"""Policy registry: versions, atomic ``current``, crash safety, validation, the policies CLI.

The registry never loads weights, so these tests stage adapter files by hand; the training
tests (tests/test_training.py) commit real adapters.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from selfimprove.errors import PolicyError
from selfimprove.registry import PolicyRegistry

BASE = "smollm2-135m-instruct"


def stage(registry: PolicyRegistry, base: str = BASE) -> Path:
    """A staging directory holding what a LoRA training run writes."""
    staging = registry.staging_dir()
    adapter = staging / "adapter"
    adapter.mkdir()
    config = {"base_model_name_or_path": base, "peft_type": "LORA", "r": 8}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    (adapter / "adapter_model.safetensors").write_bytes(b"not read by the registry")
    return staging


def commit(registry: PolicyRegistry, parent: str = "v0", **kw) -> str:
    ref = registry.commit(stage(registry), parent=parent, method="dpo", **kw)
    return ref.version


def run_child(run_dir: Path, body: str) -> subprocess.Popen:
    """Start a Python process that works on the registry and then waits to be killed."""
    code = (
        textwrap.dedent(
            f"""
        import sys, time
        from pathlib import Path
        from selfimprove.registry import PolicyRegistry
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_registry import stage
        registry = PolicyRegistry(Path({str(run_dir)!r}))
        """
        )
        + textwrap.dedent(body)
        + "\nprint('READY', flush=True)\ntime.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line.strip())
        if line.startswith("READY"):
            break
    else:
        raise AssertionError(f"child failed: {proc.stderr.read() if proc.stderr else ''}")
    proc.lines = lines  # type: ignore[attr-defined]
    return proc


def kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def test_new_registry_serves_the_base_as_v0(tmp_path: Path) -> None:
    registry = PolicyRegistry(tmp_path)
    ref = registry.current()
    assert (ref.version, ref.base_model, ref.adapter_path) == ("v0", BASE, None)
    record = json.loads((tmp_path / "policies/v0/policy.json").read_text())
    assert record["status"] == "base" and record["parent"] is None
    assert [r.version for r in registry.versions()] == ["v0"]


def test_commit_records_lineage_and_promote_switches_current(tmp_path: Path) -> None:
    registry = PolicyRegistry(tmp_path)
    data = [{"name": "s1.parquet", "rows": 12, "kind": "pairs"}]
    v1 = registry.commit(
        stage(registry),
        parent="v0",
        method="dpo",
        data=data,
        train_config={"learning_rate": 1e-4},
        metrics={"final_loss": 0.3},
    )
    assert v1.version == "v1"
    assert v1.adapter_path == str(tmp_path / "policies/v1/adapter")
    assert registry.current().version == "v0", "a commit alone must not change current"
    registry.promote("v1")
    assert registry.current() == v1
    v2 = registry.commit(stage(registry), parent="v1", method="sft")
    registry.promote(v2.version)

    reopened = PolicyRegistry(tmp_path)
    assert reopened.current().version == "v2"
    records = {r.version: r for r in reopened.versions()}
    assert records["v1"].data[0].rows == 12
    assert records["v1"].train_config == {"learning_rate": 1e-4}
    assert records["v1"].metrics == {"final_loss": 0.3}
    assert (records["v1"].status, records["v2"].parent, records["v2"].method) == (
        "promoted",
        "v1",
        "sft",
    )
    assert not list((tmp_path / "policies").glob(".staging-*")), "commit leaves no staging"


def test_current_pointer_survives_a_failed_write(tmp_path: Path, monkeypatch) -> None:
    registry = PolicyRegistry(tmp_path)
    registry.promote(commit(registry))
    v2 = commit(registry)

    def crash(src, dst):  # the process dies right before the rename
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        registry.promote(v2)
    monkeypatch.undo()
    assert PolicyRegistry(tmp_path).current().version == "v1"
    assert not list((tmp_path / "policies").glob(".tmp-*")), "the temp file is cleaned up"


def test_kill_between_commit_and_promote_leaves_old_current(tmp_path: Path) -> None:
    registry = PolicyRegistry(tmp_path)
    registry.promote(commit(registry))
    child = run_child(
        tmp_path,
        """
        ref = registry.commit(stage(registry), parent="v1", method="dpo")
        print("COMMITTED", ref.version, flush=True)
        """,
    )
    assert "COMMITTED v2" in child.lines
    kill9(child)  # dies before it could promote
    reopened = PolicyRegistry(tmp_path)
    assert reopened.current().version == "v1"
    assert reopened.get("v2").version == "v2", "the committed candidate is complete"
    assert {r.version: r.status for r in reopened.versions()}["v2"] == "candidate"


def test_staging_of_a_live_run_is_kept_and_of_a_dead_run_removed(tmp_path: Path) -> None:
    PolicyRegistry(tmp_path)
    child = run_child(
        tmp_path,
        """
        staging = stage(registry)
        (staging / "adapter" / "half-written.bin").write_bytes(b"x" * 100)
        print("STAGING", staging, flush=True)
        """,
    )
    staging = Path(next(line.split()[1] for line in child.lines if line.startswith("STAGING")))
    try:
        registry = PolicyRegistry(tmp_path)  # opened while the run is alive
        assert staging.is_dir(), "a live training run's staging directory must survive"
        assert [r.version for r in registry.versions()] == ["v0"], "staging is invisible"
    finally:
        kill9(child)
    PolicyRegistry(tmp_path)
    assert not staging.exists()
    assert not list((tmp_path / "policies").glob(".staging-*")), "lock files go too"


def test_version_numbers_are_never_reused(tmp_path: Path) -> None:
    import shutil

    registry = PolicyRegistry(tmp_path)
    assert [commit(registry) for _ in range(3)] == ["v1", "v2", "v3"]
    shutil.rmtree(tmp_path / "policies/v3")  # removed by hand
    assert commit(PolicyRegistry(tmp_path)) == "v4"
    (tmp_path / "policies/v9").mkdir()  # a directory nobody counted
    assert commit(registry) == "v10"


def test_discarded_staging_spends_no_version(tmp_path: Path) -> None:
    registry = PolicyRegistry(tmp_path)
    staging = stage(registry)
    registry.discard(staging)
    assert not staging.exists()
    assert commit(registry) == "v1"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "adapter/adapter_model.safetensors").unlink(), "no adapter weights"),
        (lambda d: (d / "adapter/adapter_config.json").unlink(), "adapter_config.json is missing"),
        (lambda d: (d / "policy.json").write_text("{not json"), "is not JSON"),
        (lambda d: (d / "policy.json").unlink(), "policy.json is missing"),
        (
            lambda d: (d / "adapter/adapter_config.json").write_text(
                json.dumps({"base_model_name_or_path": "other/model"})
            ),
            "trained on 'other/model'",
        ),
        (
            lambda d: (d / "policy.json").write_text(
                (d / "policy.json").read_text().replace('"dpo"', '"ppo"')
            ),
            "field 'method'",
        ),
    ],
)
def test_corrupt_version_is_refused_and_current_unchanged(tmp_path: Path, damage, message) -> None:
    registry = PolicyRegistry(tmp_path)
    registry.promote(commit(registry))
    v2 = commit(registry)
    damage(tmp_path / "policies" / v2)
    with pytest.raises(PolicyError, match=message) as info:
        registry.get(v2)
    assert "policy v2" in str(info.value)
    with pytest.raises(PolicyError, match="policy v2"):
        registry.promote(v2)
    assert registry.current().version == "v1"
    assert {r.version: r.status for r in registry.versions()}["v2"] == "corrupt"


def test_missing_version_and_bad_names(tmp_path: Path) -> None:
    registry = PolicyRegistry(tmp_path)
    with pytest.raises(PolicyError, match="policy v7 does not exist"):
        registry.get("v7")
    with pytest.raises(PolicyError, match="'latest' is not a policy version"):
        registry.promote("latest")
    with pytest.raises(PolicyError, match="policy v3 does not exist"):
        registry.commit(stage(registry), parent="v3", method="dpo")
    assert registry.current().version == "v0"


def test_commit_refuses_an_incomplete_staging_dir(tmp_path: Path) -> None:
    registry = PolicyRegistry(tmp_path)
    staging = registry.staging_dir()
    (staging / "adapter").mkdir()
    with pytest.raises(PolicyError, match="adapter_config.json is missing"):
        registry.commit(staging, parent="v0", method="dpo")
    assert [r.version for r in registry.versions()] == ["v0"]
    with pytest.raises(PolicyError, match="not a staging directory"):
        registry.commit(tmp_path, parent="v0", method="dpo")


def test_rejected_candidate_never_becomes_current(tmp_path: Path) -> None:
    registry = PolicyRegistry(tmp_path)
    registry.promote(commit(registry))
    v2 = commit(registry, parent="v1")
    registry.mark_rejected(v2, "lost the eval gate 0.41 vs 0.55")
    with pytest.raises(PolicyError, match="rejected \\(lost the eval gate"):
        registry.promote(v2)
    assert registry.current().version == "v1"
    with pytest.raises(PolicyError, match="is current"):
        registry.mark_rejected("v1", "no")
    with pytest.raises(PolicyError, match="base model"):
        registry.mark_rejected("v0", "no")


def test_commit_records_the_cycle_and_trained_in_finds_it(tmp_path: Path) -> None:
    registry = PolicyRegistry(tmp_path)
    assert registry.record("v0").cycle is None
    assert registry.trained_in(1, "dpo") is None
    v1 = commit(registry, cycle=1)
    v2 = registry.commit(stage(registry), parent="v0", method="sft", cycle=1).version
    v3 = commit(registry, parent=v1, cycle=2)
    untagged = commit(registry)  # trained outside a cycle (selfimprove train)
    record = json.loads((tmp_path / "policies" / v3 / "policy.json").read_text())
    assert record["cycle"] == 2
    reopened = PolicyRegistry(tmp_path)
    assert reopened.record(untagged).cycle is None
    assert reopened.trained_in(1, "dpo") == v1
    assert reopened.trained_in(1, "sft") == v2
    assert reopened.trained_in(2, "dpo") == v3
    assert reopened.trained_in(2, "sft") is None and reopened.trained_in(3, "dpo") is None
    # a rejected candidate was still trained in its cycle: a resumed run must not train again
    reopened.mark_rejected(v3, "lost the gate")
    assert reopened.trained_in(2, "dpo") == v3
    # a corrupt one is not a usable result of its cycle
    (tmp_path / "policies" / v1 / "adapter" / "adapter_model.safetensors").unlink()
    assert reopened.trained_in(1, "dpo") is None
    assert reopened.trained_in(1, "sft") == v2


def test_record_eval_appends(tmp_path: Path) -> None:
    registry = PolicyRegistry(tmp_path)
    v1 = commit(registry)
    registry.record_eval(v1, {"win_rate": 0.6, "n": 20})
    registry.record_eval(v1, {"win_rate": 0.7, "n": 40})
    evals = PolicyRegistry(tmp_path).versions()[1].evals
    assert [e.metrics["win_rate"] for e in evals] == [0.6, 0.7]


def test_base_model_is_fixed_at_creation(tmp_path: Path) -> None:
    PolicyRegistry(tmp_path, base_model="org/some-model")
    assert PolicyRegistry(tmp_path).base_model == "org/some-model"
    with pytest.raises(PolicyError, match="built on 'org/some-model'"):
        PolicyRegistry(tmp_path, base_model=BASE)


def test_full_fine_tune_version_is_served_as_its_model_dir(tmp_path: Path) -> None:
    registry = PolicyRegistry(tmp_path)
    staging = registry.staging_dir()
    (staging / "model").mkdir()
    (staging / "model/config.json").write_text("{}")
    (staging / "model/model.safetensors").write_bytes(b"w")
    ref = registry.commit(staging, parent="v0", method="sft")
    assert ref.adapter_path is None
    assert ref.base_model == str(tmp_path / "policies/v1/model")
    child = registry.commit(stage(registry, base=ref.base_model), parent="v1", method="dpo")
    assert child.base_model == ref.base_model
    record = json.loads((tmp_path / "policies/v2/policy.json").read_text())
    assert record["base_model"] == "policies/v1/model", "stored relative to the run"


def test_policies_cli_lists_versions_and_current(tmp_path: Path, capsys, monkeypatch) -> None:
    from selfimprove.cli import policies

    monkeypatch.setenv("COLUMNS", "120")  # one table row per line

    registry = PolicyRegistry(tmp_path)
    v1 = registry.commit(
        stage(registry),
        parent="v0",
        method="dpo",
        data=[{"name": "a.parquet", "rows": 7, "kind": "pairs"}],
        metrics={"final_loss": 0.25, "rewards_margins": 1.5},
    )
    registry.promote(v1.version)
    registry.record_eval("v1", {"win_rate": 0.75})
    v2 = commit(registry, parent="v1")
    registry.mark_rejected(v2, "worse")

    parser = argparse.ArgumentParser()
    policies.register(parser.add_subparsers())
    args = parser.parse_args(["policies", str(tmp_path), "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["current"] == "v1"
    assert [v["status"] for v in out["versions"]] == ["base", "promoted", "rejected"]

    args = parser.parse_args(["policies", str(tmp_path)])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    lines = {line.split()[1]: line for line in text.splitlines() if line[2:4] in ("v0", "v1", "v2")}
    for version, expected in {
        "v0": ["base"],
        "v1": ["current", " 7 ", "0.25", "1.5", "win 0.75"],
        "v2": ["rejected"],
    }.items():
        for word in expected:
            assert word in lines[version], (version, word, lines[version])
    # the gate's reason is printed under the table, where it has room
    assert "v2 rejected: worse" in text

    with pytest.raises(PolicyError, match="no policies"):
        args.func(parser.parse_args(["policies", str(tmp_path / "nowhere")]))


def test_policies_cli_promote_repairs_a_lost_pointer_and_rolls_back(tmp_path: Path,
                                                                    capsys) -> None:
    from selfimprove.cli import main

    registry = PolicyRegistry(tmp_path)
    v1 = commit(registry, parent="v0")
    registry.promote(v1)
    v2 = commit(registry, parent="v1")
    registry.mark_rejected(v2, "worse")
    (tmp_path / "policies" / "current.json").write_text("{not json")
    assert main(["policies", str(tmp_path), "--json"]) == 0
    out = capsys.readouterr().out
    assert f"repair it by promoting the version that should be current: `selfimprove policies " \
        f"{tmp_path} --promote VERSION`" in out
    assert main(["policies", str(tmp_path), "--promote", "v1", "--json"]) == 0
    captured = capsys.readouterr()
    assert "current: v1" in captured.err and json.loads(captured.out)["current"] == "v1"
    assert PolicyRegistry(tmp_path).current_version() == "v1"
    assert main(["policies", str(tmp_path), "--promote", "v0"]) == 0  # a rollback
    assert PolicyRegistry(tmp_path).current_version() == "v0"
    assert main(["policies", str(tmp_path), "--promote", v2]) == 2
    assert "was rejected (worse); it cannot become current" in capsys.readouterr().err
    assert PolicyRegistry(tmp_path).current_version() == "v0"


def test_policies_cli_names_a_corrupt_record_once(tmp_path: Path, capsys, monkeypatch) -> None:
    from selfimprove.cli import main

    monkeypatch.setenv("COLUMNS", "200")
    registry = PolicyRegistry(tmp_path)
    v1 = commit(registry, parent="v0")
    registry.promote(v1)
    record = tmp_path / "policies" / v1 / "policy.json"
    record.write_text(record.read_text()[:40])
    assert main(["policies", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    (row,) = [line for line in out.splitlines() if line[2:4] == "v1"]
    assert row.split("│")[3].strip() == "?" and "corrupt" in row
    assert out.count("policy.json is not JSON") == 1
