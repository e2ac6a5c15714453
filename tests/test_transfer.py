"""Transfer prompt sets: evaluated after the cycles, saved per arm, reported, checked unseen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfimprove.config import ControlConfig
from selfimprove.errors import ConfigError
from selfimprove.rundir import RunDir
from selfimprove.runner import run
from selfimprove.sources import PromptRecord
from selfimprove.transfer import load_transfer_sets, transfer_set_name
from tests.scripted_cycle import PROMPTS, fake_trainer, load_cfg, make_roles, write_inputs

# Unseen prompts, one with a check of its own: LONG (v0) breaks the run's 12-word limit and
# SHORT (v1) keeps it, so v1 passes both prompts where v0 passed none.
UNSEEN = [{"prompt": "an unseen question?"},
          {"prompt": "another unseen one?", "checks": [{"kind": "min_words", "value": 3}]}]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize(("source", "name"), [
    ("instructions-heldout-kinds", "instructions-heldout-kinds"),
    ("data/other.prompts.jsonl", "other.prompts"),
    ("my set.TXT", "my-set"),
])
def test_a_set_is_named_after_its_packaged_name_or_file_stem(source, name):
    assert transfer_set_name(source) == name


def test_a_set_holding_a_training_prompt_is_refused_with_its_key(tmp_path):
    train = [PromptRecord(id="t", prompt="seen before?")]
    ok = write_jsonl(tmp_path / "ok.jsonl", UNSEEN)
    leaky = write_jsonl(tmp_path / "leaky.jsonl", [*UNSEEN, {"prompt": "seen before?"}])
    with pytest.raises(ConfigError) as err:
        load_transfer_sets([str(ok), str(leaky)], train, "run.yaml")
    assert err.value.field == "transfer_prompts.1"
    assert "1 prompt(s) of" in err.value.detail and "'seen before?'" in err.value.detail


def test_two_sets_of_one_name_and_an_empty_set_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    first = write_jsonl(tmp_path / "x.jsonl", UNSEEN)
    second = write_jsonl(tmp_path / "a" / "x.jsonl", UNSEEN)
    with pytest.raises(ConfigError, match="two transfer prompt sets are named 'x'"):
        load_transfer_sets([str(first), str(second)], [], "run.yaml")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match=f"{empty}: no prompts in file"):
        load_transfer_sets([str(empty)], [], "run.yaml")


def test_a_set_whose_check_takes_a_constitution_check_id_is_refused_at_its_line(tmp_path):
    from selfimprove.constitution import load_constitution

    clash = {"prompt": "a third one?", "checks": [
        {"id": "says_something", "kind": "max_words", "value": 3}]}
    path = write_jsonl(tmp_path / "clash.jsonl", [*UNSEEN, clash])
    with pytest.raises(ConfigError) as err:
        load_transfer_sets([str(path)], [], "run.yaml",
                           constitution=load_constitution("instructions"))
    assert (err.value.path, err.value.line, err.value.field) == (str(path), 3, "checks[0].id")
    assert "also a different check of the constitution 'instructions'" in err.value.detail
    # without a constitution there is nothing to clash with
    assert len(load_transfer_sets([str(path)], [], "run.yaml")["clash"]) == 3


def _run(tmp_path: Path, resume: bool = False, **overrides):
    stages: list[tuple[str, str]] = []
    run_dir = tmp_path / "run"
    if resume:
        run(None, run_dir, resume=True, roles=make_roles(), trainer=fake_trainer,
            progress=lambda s, m: stages.append((s, m)))
        return run_dir, stages
    cfg_path = write_inputs(tmp_path)
    cfg = load_cfg(cfg_path).model_copy(update=overrides)
    run(cfg, run_dir, config_path=cfg_path, roles=make_roles(), trainer=fake_trainer,
        progress=lambda s, m: stages.append((s, m)))
    return run_dir, stages


def test_each_arm_answers_the_sets_after_its_cycles_and_the_report_compares(tmp_path):
    write_jsonl(tmp_path / "unseen.jsonl", UNSEEN)
    run_dir, stages = _run(tmp_path, transfer_prompts=["unseen.jsonl"],
                           control=ControlConfig(enabled=True, kind="trim"))
    loop, control = RunDir(run_dir), RunDir(run_dir / "control")
    # the relative path was resolved against the config's folder and kept in the run's config
    assert load_cfg(loop.config_path).transfer_prompts == [str(tmp_path / "unseen.jsonl")]
    sets = loop.transfer_sets()
    assert list(sets) == ["unseen"] and [e.version for e in sets["unseen"]] == ["v0", "v1"]
    v0, v1 = sets["unseen"]
    assert v0.prompts == [r["prompt"] for r in UNSEEN]
    assert v0.passes_checks == [False, False] and v1.passes_checks == [True, True]
    assert v1.retention_nll is None  # the gate measures retention, not the transfer sets
    # the control arm reuses the loop's v0 answers and evaluates its own current version
    assert [e.version for e in control.transfer_sets()["unseen"]] == ["v0", "v1"]
    evaluating = [m for s, m in stages if s == "transfer"]
    assert evaluating == ["evaluating v0 on 2 prompts of unseen",
                          "evaluating v1 on 2 prompts of unseen",
                          "evaluating v1 on 2 prompts of unseen"]
    report = (run_dir / "report.md").read_text()
    section = report.split("## Prompt sets training never saw")[1].split("\n## ")[0]
    assert "### unseen" in section and "| loop: v1 | 2 | 0.00 |" in section
    assert "| control: v1 | 2 | 0.00 |" in section and "| v0 | 2 | 1.00 |" in section
    assert ("- loop: v1 passes every check on 2 of 2 prompts, v0 on 0: rose (gained 2, lost 0; "
            "McNemar p = 0.5: within what chance gives)." in section)
    # per check kind: the constitution's and the prompts' own
    assert "| version | max_words | min_words |\n|---|---|---|\n| v0 | 0.00 | 1.00 |" in section
    assert "### unseen" in (run_dir / "control" / "report.md").read_text()
    assert loop.status().status == control.status().status == "finished"


def test_a_resumed_finished_run_does_not_evaluate_the_sets_again(tmp_path):
    write_jsonl(tmp_path / "unseen.jsonl", UNSEEN)
    run_dir, _ = _run(tmp_path, transfer_prompts=["unseen.jsonl"])
    saved = RunDir(run_dir).transfer_path("unseen", "v1").read_bytes()
    _, stages = _run(tmp_path, resume=True)
    assert not [m for s, m in stages if s == "transfer"]
    assert RunDir(run_dir).transfer_path("unseen", "v1").read_bytes() == saved


def test_a_set_of_training_prompts_fails_before_the_run_directory_exists(tmp_path):
    write_jsonl(tmp_path / "train-again.jsonl", [{"prompt": p} for p in PROMPTS])
    with pytest.raises(ConfigError) as err:
        _run(tmp_path, transfer_prompts=["train-again.jsonl"])
    assert err.value.field == "transfer_prompts.0"
    assert not (tmp_path / "run").exists()


def test_a_missing_set_names_its_key(tmp_path):
    with pytest.raises(ConfigError) as err:
        _run(tmp_path, transfer_prompts=["general", "nowhere.jsonl"])
    assert err.value.field == "transfer_prompts.1" and "prompt file not found" in str(err.value)


def test_cli_eval_save_needs_unseen_prompts_and_says_so(tmp_path, capsys):
    from selfimprove.cli import main

    run_dir, _ = _run(tmp_path)
    code = main(["eval", str(run_dir), "--save"])
    assert code == 2 and "--save: needs --prompts" in capsys.readouterr().err
    seen = write_jsonl(tmp_path / "seen.jsonl", [{"prompt": p} for p in PROMPTS])
    code = main(["eval", str(run_dir), "--prompts", str(seen), "--save"])
    err = capsys.readouterr().err
    assert code == 2 and "--prompts: " in err and "are training prompts of this run" in err
    assert not (run_dir / "evals" / "transfer").exists()


def test_cli_eval_json_counts_passes_and_answers_per_kind():
    from selfimprove.cli.eval import _summary
    from selfimprove.evaluation import PolicyEval

    e = PolicyEval(version="v1", violation_rate=1 / 3, mean_words=5.0, n_prompts=3,
                   passes_checks=[True, False, True], kind_pass_rates={"lowercase": 0.5},
                   kind_counts={"lowercase": 2})
    summary = _summary(e)
    assert summary["passes_all_checks"] == 2
    assert summary["kind_counts"] == {"lowercase": 2}
    assert summary["kind_pass_rates"] == {"lowercase": 0.5}
