"""Bad run configs fail before any work starts, naming the file, the line and the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfimprove.cli import main
from selfimprove.config import RunConfig, load_config
from selfimprove.errors import ConfigError

GOOD = Path(__file__).resolve().parent.parent / "examples" / "configs" / "concise-cpu.yaml"

# (yaml text, line, field, message fragment)
CASES = {
    "unknown_top_key": ("seed: 1\ncycels: 3\n", 2, "cycels", "unknown key"),
    "cycles_zero": ("cycles: 0\n", 1, "cycles", "greater than or equal to 1"),
    "cycles_not_int": ("cycles: three\n", 1, "cycles", "valid integer"),
    "heldout_too_big": ("heldout_fraction: 1.5\n", 1, "heldout_fraction", "less than 1"),
    "unknown_nested_key": (
        "critique:\n  constitution: concise\n  max_round: 2\n", 3, "critique.max_round",
        "unknown key",
    ),
    "bad_backend_kind": (
        "critique:\n  roles:\n    policy:\n      backend:\n        kind: tpu\n",
        5, "critique.roles.policy.backend.kind", "'transformers'",
    ),
    "openai_without_url": (
        "critique:\n  roles:\n    judge:\n      backend:\n        kind: openai\n",
        4, "critique.roles.judge.backend", "base_url",
    ),
    "engine_args_off_vllm": (
        "critique:\n  roles:\n    policy:\n      backend:\n        kind: transformers\n"
        "        engine_args: {max_model_len: 512}\n",
        4, "critique.roles.policy.backend", "engine_args is for kind 'vllm'",
    ),
    "engine_args_shadow_own_keys": (
        "critique:\n  roles:\n    policy:\n      backend:\n        kind: vllm\n"
        "        engine_args: {dtype: half, model: x}\n",
        4, "critique.roles.policy.backend", "may not set dtype, model",
    ),
    "negative_temperature": (
        "critique:\n  roles:\n    critic:\n      sampling:\n        temperature: -1\n",
        5, "critique.roles.critic.sampling.temperature", "greater than or equal to 0",
    ),
    "bad_schedule_method": (
        "schedule:\n  methods: [dpo, ppo]\n", 2, "schedule.methods[1]", "'dpo' or 'sft'",
    ),
    "bad_trl_arg": (
        "dpo:\n  method: dpo\n  trl_args:\n    not_a_trl_arg: 1\n", 3, "dpo.trl_args",
        "not_a_trl_arg",
    ),
    "dpo_with_sft_method": ("dpo:\n  method: sft\n", 1, None, "dpo.method must be 'dpo'"),
    "bad_strategy": (
        "harvest:\n  strategies: [revision, rlhf]\n", 2, "harvest.strategies[1]", "revision",
    ),
    "gate_bad_num": ("gate:\n  num_prompts: 0\n", 2, "gate.num_prompts", "greater than"),
    "two_prompt_sources": (
        "prompts:\n  path: a.jsonl\n  dataset: my/data\n", 1, "prompts", "exactly one",
    ),
    "not_a_mapping": ("- 1\n- 2\n", 1, None, "expected a mapping"),
    "yaml_syntax": ("cycles: [1, 2\n", 2, None, "invalid YAML"),
    "duplicate_key": ("cycles: 1\ncycles: 2\n", 2, None, "duplicate key"),
    # settings under which no pair could be kept or no candidate promoted
    "no_strategies": ("harvest:\n  strategies: []\n", 2, "harvest.strategies", "at least 1"),
    "best_of_n_without_samples": ("harvest:\n  strategies: [best_of_n]\n", 1, "harvest",
                                  "critique.num_samples is 0"),
    "gate_length_bounds_crossed": ("gate:\n  min_length_ratio: 2.0\n", 1, "gate",
                                   "min_length_ratio 2.0 is above max_length_ratio 1.25"),
    "harvest_length_bounds_crossed": (
        "harvest:\n  min_length_ratio: 2.0\n  max_length_ratio: 1.5\n", 1, "harvest",
        "no pair could pass both"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_config_errors_name_file_line_and_key(tmp_path, name):
    text, line, field, fragment = CASES[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, RunConfig)
    err = info.value
    assert err.path == str(path)
    assert err.line == line, str(err)
    if field is not None:
        assert err.field == field, str(err)
    assert fragment in str(err)


@pytest.mark.parametrize("path", sorted(GOOD.parent.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_config_can_start(path):
    """More than validation: the constitution, the prompts and their checks, the held-out
    split and the model each config names are all there (what `run` checks before writing)."""
    from selfimprove.runner import prepare, resolve_prompt_path

    cfg = resolve_prompt_path(load_config(path, RunConfig), path)
    prepared = prepare(cfg, path)
    assert len(prepared.heldout_prompts) >= cfg.gate.num_prompts
    assert len(prepared.train_prompts) >= cfg.batch_size


def test_cli_run_fails_before_any_work(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cycles: 2\nbatch_size: many\n")
    run_dir = tmp_path / "run"
    code = main(["run", "--config", str(bad), "--run-dir", str(run_dir)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{bad}:2" in err and "batch_size" in err
    assert not run_dir.exists()  # nothing was started


def test_cli_flags_override_config_keys(tmp_path):
    import argparse

    from selfimprove.cli.run import config_from_args

    args = argparse.Namespace(config=GOOD, cycles=5, batch_size=4, seed=9, durable=False,
                              constitution="hhh", model="some/model")
    cfg = config_from_args(args)
    assert (cfg.cycles, cfg.batch_size, cfg.seed, cfg.durable) == (5, 4, 9, False)
    assert cfg.critique.constitution == "hhh"
    assert cfg.critique.roles.policy.backend.model == "some/model"


def test_cli_run_with_a_missing_local_model_fails_before_writing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = ["run", "--config", str(GOOD), "--run-dir", str(run_dir), "--model", "./no-such-model"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no-such-model" in err and "not found" in err
    assert not run_dir.exists()  # the same command, fixed, can start this run


def test_cli_run_refuses_a_prompt_check_that_reuses_a_constitution_check_id(tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    rows = [{"prompt": f"Say hi number {i}."} for i in range(9)]
    rows.append({"prompt": "Say hi.", "checks": [
        {"id": "says_something", "kind": "max_words", "value": 3}]})
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / "c.yaml"
    config.write_text(f"prompts:\n  path: {prompts}\ncritique:\n  constitution: instructions\n"
                      "heldout_fraction: 0.5\ncontrol:\n  kind: best_of_checks\n")
    run_dir = tmp_path / "run"
    assert main(["run", "--config", str(config), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert f"{prompts}:10: field 'checks[0].id'" in err  # the record's line
    assert "'says_something' is also a different check of the constitution" in err
    assert not run_dir.exists()


def refused_run(tmp_path, capsys, text: str) -> tuple[Path, str]:
    """``selfimprove run`` on a config of ``text``: refused (exit 2) before the run directory
    exists, so the same command, fixed, can start the run. Returns the config and stderr."""
    config = tmp_path / "c.yaml"
    config.write_text(text)
    run_dir = tmp_path / "run"
    assert main(["run", "--config", str(config), "--run-dir", str(run_dir)]) == 2
    assert not run_dir.exists()
    return config, capsys.readouterr().err


def test_cli_run_names_the_config_field_of_a_missing_constitution(tmp_path, capsys):
    config, err = refused_run(tmp_path, capsys, "critique:\n  constitution: nosuch\n")
    assert f"{config}: field 'critique.constitution': no constitution named 'nosuch'" in err


@pytest.mark.parametrize("device", ["tpu9", "cuda"])
def test_cli_run_refuses_a_device_before_the_run_directory_exists(tmp_path, capsys, device):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    config, err = refused_run(
        tmp_path, capsys,
        f"critique:\n  roles:\n    policy:\n      backend: {{device: {device}}}\n")
    assert f"{config}: field 'critique.roles.policy.backend.device'" in err
    assert ("not a torch device" if device == "tpu9" else "has no cuda device") in err


def test_eval_of_a_directory_without_a_run_says_so(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path} holds no run (no config.yaml;" in err and "resume" not in err


def test_a_batch_or_gate_larger_than_its_split_is_said_and_recorded(tmp_path, caplog):
    from selfimprove.runner import _summary, prepare
    from tests.scripted_cycle import load_cfg, write_inputs

    path = write_inputs(tmp_path)
    cfg = load_cfg(path)
    cfg = cfg.model_copy(update={"batch_size": 500,
                                 "gate": cfg.gate.model_copy(update={"num_prompts": 200})})
    with caplog.at_level("WARNING", logger="selfimprove.runner"):
        prepared = prepare(cfg, path)
    train, heldout = len(prepared.train_prompts), len(prepared.heldout_prompts)
    assert f"batch_size is 500, but there are only {train} training prompts" in caplog.text
    assert f"gate.num_prompts is 200, but there are only {heldout} held-out" in caplog.text
    summary = _summary(prepared)
    assert (summary["prompts per cycle"], summary["gate prompts"]) == (train, heldout)


def test_lora_target_modules_the_model_lacks_fail_before_any_work(tmp_path, capsys):
    from selfimprove.runner import prepare

    config, err = refused_run(
        tmp_path, capsys, "dpo:\n  lora:\n    target_modules: [nonexistent_proj, q_proj]\n")
    assert f"{config}: field 'dpo.lora.target_modules': smollm2-135m-instruct has no module " \
        "named nonexistent_proj (its linear layers: down_proj, gate_proj" in err
    config.write_text("dpo:\n  lora:\n    target_modules: [q_proj, up_proj]\n")
    assert prepare(load_config(config, RunConfig), config).train_prompts  # names it has
