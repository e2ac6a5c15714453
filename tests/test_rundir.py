"""The run directory: every path of a run, its typed records, and errors that name the file."""

from __future__ import annotations

import json
import random

import pytest
from pydantic import ValidationError

from selfimprove.config import GateConfig, RunConfig, load_config
from selfimprove.degeneration import degeneration_stats
from selfimprove.evaluation import PolicyEval
from selfimprove.gate import GateResult, wilson_interval
from selfimprove.judges.diagnostics import diagnose
from selfimprove.rundir import CycleRecord, RunDir, RunDirError, RunStatus
from selfimprove.types import Verdict


def policy_eval(version: str, violation_rate: float = 0.25) -> PolicyEval:
    responses = ["One answer here.", "Another answer.", "A third one.", "And the last."]
    return PolicyEval(
        version=version, violation_rate=violation_rate, mean_words=2.75, retention_nll=2.0,
        n_prompts=4, prompts=["a", "b", "c", "d"], responses=responses,
        passes_checks=[True, True, True, False], finish_reasons=["stop"] * 3 + ["length"],
        check_pass_rates={"short": 0.75}, degeneration=degeneration_stats(
            responses, ["stop"] * 3 + ["length"]),
    )


def gate_result(candidate: str = "v1") -> GateResult:
    verdicts = [Verdict(winner="b", p_b=0.9, decided_by="judge"),
                Verdict(winner="a", decided_by="checks", b_passes_checks=False)]
    return GateResult(
        candidate=policy_eval(candidate, 0.5), incumbent=policy_eval("v0"), win_rate=0.5,
        win_rate_ci=wilson_interval(1, 2), wins=1, ties=0, losses=1, abstains=0,
        length_ratio=1.0, retention_increase=0.0, passed=False,
        reasons=["win rate 0.50 < 0.60"], thresholds=GateConfig().model_dump(mode="json"),
        verdicts=verdicts, judge=diagnose(verdicts),
    )


def record(cycle: int, **kw) -> CycleRecord:
    return CycleRecord(cycle=cycle, prompts=8, pairs_kept=cycle, current="v0", **kw)


# ---- paths -----------------------------------------------------------------------------


def test_paths_and_creating_the_object_touches_nothing(tmp_path):
    run = RunDir(tmp_path / "run")
    assert not run.path.exists() and not run.holds_run()
    assert run.config_path == tmp_path / "run" / "config.yaml"
    assert run.checkpoints_path == tmp_path / "run" / "checkpoints.sqlite"
    assert run.report_path == tmp_path / "run" / "report.md"
    assert run.plots_dir == tmp_path / "run" / "plots"
    assert run.eval_path("v3") == tmp_path / "run" / "evals" / "v3.json"
    assert run.gate_path("v3") == tmp_path / "run" / "evals" / "v3-gate.json"
    assert isinstance(run.control, RunDir) and run.control.path == tmp_path / "run" / "control"
    assert run.control.eval_path("v0") == tmp_path / "run" / "control" / "evals" / "v0.json"
    assert not run.path.exists()
    assert repr(run) == f"RunDir({str(tmp_path / 'run')!r})"


def test_cycle_path_is_one_based(tmp_path):
    run = RunDir(tmp_path)
    assert run.cycle_path(1) == tmp_path / "cycles" / "cycle-0001.json"
    assert run.cycle_path(10).name == "cycle-0010.json"
    for bad in (0, -1):
        with pytest.raises(ValueError, match="numbered from 1"):
            run.cycle_path(bad)
    with pytest.raises(ValidationError):
        CycleRecord(cycle=0)  # a record cannot be cycle 0 either


# ---- configuration, summary, status -------------------------------------------------------


def test_create_writes_config_and_summary_once(tmp_path):
    run = RunDir(tmp_path / "new" / "run")
    config = RunConfig(cycles=2, seed=7)
    run.create(config, {"constitution": "concise", "cycles": 2})
    assert run.holds_run()
    assert load_config(run.config_path, RunConfig) == config
    assert run.summary() == {"constitution": "concise", "cycles": 2}
    with pytest.raises(RunDirError, match="already holds a run.*--resume"):
        run.create(RunConfig(cycles=5), {"other": True})
    assert load_config(run.config_path, RunConfig).cycles == 2  # nothing overwritten
    assert run.summary() == {"constitution": "concise", "cycles": 2}


def test_a_config_cut_short_is_refused_on_resume_an_edit_is_not(tmp_path):
    from selfimprove.runner import load_run_config

    run = RunDir(tmp_path / "run")
    run.create(RunConfig(cycles=2, seed=7), {})
    assert not run.config_edited()
    assert load_run_config(run).cycles == 2
    text = run.config_path.read_text(encoding="utf-8")
    # An edit that keeps every key is the user's right: a resume honours it.
    run.config_path.write_text(text.replace("cycles: 2", "cycles: 4"), encoding="utf-8")
    assert run.config_edited()
    assert load_run_config(run).cycles == 4
    # Cut at a line boundary, the file is valid YAML whose missing blocks would be defaults.
    lines = text.splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if line.startswith("gate:"))
    run.config_path.write_text("".join(lines[: cut + 2]), encoding="utf-8")
    with pytest.raises(RunDirError, match=r"config.yaml: lacks gate\.\w+.*cut short or edited"):
        load_run_config(run)
    # A run without a digest (written before one was kept) is read as it is.
    (run.path / RunDir.CONFIG_DIGEST).unlink()
    assert not run.config_edited()
    assert load_run_config(run).cycles == 2


def test_create_takes_only_a_new_or_empty_directory(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    RunDir(empty).create(RunConfig(), {})  # an empty directory is free
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "summary.json").write_text('{"mine": "important data"}')
    with pytest.raises(RunDirError, match="holds files but no run.*new or empty --run-dir"):
        RunDir(theirs).create(RunConfig(), {})
    assert (theirs / "summary.json").read_text() == '{"mine": "important data"}'
    assert sorted(p.name for p in theirs.iterdir()) == ["summary.json"]
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep")
    with pytest.raises(RunDirError, match="is a file, not a directory"):
        RunDir(a_file).create(RunConfig(), {})
    with pytest.raises(RunDirError, match="cannot create the run directory"):
        RunDir(a_file / "run").create(RunConfig(), {})
    assert a_file.read_text() == "keep"


def test_summary_missing_or_not_an_object(tmp_path):
    run = RunDir(tmp_path)
    assert run.summary() == {}
    (tmp_path / "summary.json").write_text("[1, 2]")
    with pytest.raises(RunDirError, match="summary.json: expected a JSON object"):
        run.summary()


def test_status_round_trip(tmp_path):
    run = RunDir(tmp_path)
    assert run.status() is None
    run.set_status("running")
    assert run.status() == RunStatus(status="running", detail="")
    run.set_status("failed", "CUDA out of memory")
    assert RunDir(tmp_path).status() == RunStatus(status="failed", detail="CUDA out of memory")
    with pytest.raises(ValidationError):
        run.set_status("exploded")
    assert run.status().status == "failed"  # a refused status writes nothing


# ---- records ---------------------------------------------------------------------------


def test_eval_and_baseline_round_trip(tmp_path):
    run = RunDir(tmp_path)
    assert run.load_eval("v0") is None and run.baseline() is None
    v0, v1 = policy_eval("v0"), policy_eval("v1", 0.5)
    run.save_eval(v0)
    run.save_eval(v1)
    assert run.eval_path("v1").is_file()
    assert run.load_eval("v1") == v1
    assert run.baseline() == v0  # the baseline is v0's evaluation
    assert run.load_eval("v1").degeneration.truncation_rate == 0.25


def test_gate_round_trip(tmp_path):
    run = RunDir(tmp_path)
    assert run.load_gate("v1") is None
    result = gate_result("v1")
    run.save_gate("v1", result)
    loaded = RunDir(tmp_path).load_gate("v1")
    assert loaded == result
    assert loaded.judge is not None and loaded.judge.n == 2
    assert run.load_eval("v1") is None  # a gate result is not the candidate's eval file


def test_cycle_round_trip(tmp_path):
    run = RunDir(tmp_path)
    assert run.load_cycles() == []  # a run directory without cycles/
    rec = record(1, kept={"checks": 1}, dropped={"tie": 2}, trained=True, train_method="dpo",
                 train_metrics={"train_loss": 0.5}, candidate="v1", eval=gate_result(),
                 decision="rejected", reasons=["win rate 0.50 < 0.60"],
                 stage_seconds={"train": 1.5})
    run.save_cycle(rec)
    assert run.cycle_path(1).is_file()
    assert RunDir(tmp_path).load_cycles() == [rec]


@pytest.mark.parametrize("n", [2, 10])
def test_load_cycles_in_cycle_order(tmp_path, n):
    run = RunDir(tmp_path)
    numbers = list(range(1, n + 1))
    random.Random(n).shuffle(numbers)
    for c in numbers:
        run.save_cycle(record(c))
    assert [r.cycle for r in run.load_cycles()] == list(range(1, n + 1))
    assert [p.name for p in sorted((tmp_path / "cycles").iterdir())][-1] == f"cycle-{n:04d}.json"


def test_load_cycles_orders_by_number_not_by_name(tmp_path):
    """Unpadded names (cycle-10 sorts before cycle-2 as text) still load in numeric order;
    files that are not cycle records are ignored, and so are keys of a newer writer."""
    folder = tmp_path / "cycles"
    folder.mkdir()
    for c in (10, 2, 1):
        data = record(c).model_dump(mode="json") | {"key_from_a_newer_writer": 1}
        (folder / f"cycle-{c}.json").write_text(json.dumps(data))
    (folder / "notes.json").write_text("{}")
    (folder / "cycle-3.json.tmp").write_text("{half")
    (folder / "cycle-x.json").write_text("{}")
    assert [r.cycle for r in RunDir(tmp_path).load_cycles()] == [1, 2, 10]


def test_a_record_under_another_cycle_s_name_is_refused(tmp_path):
    run = RunDir(tmp_path)
    run.save_cycle(record(1))
    (tmp_path / "cycles" / "cycle-0003.json").write_bytes(run.cycle_path(1).read_bytes())
    with pytest.raises(RunDirError, match="cycle-0003.json: the record is of cycle 1, not 3"):
        run.load_cycles()


def test_missing_run_dir(tmp_path):
    with pytest.raises(RunDirError, match="no such run directory"):
        RunDir(tmp_path / "missing").load_cycles()


def test_unreadable_json_names_the_file(tmp_path):
    run = RunDir(tmp_path)
    run.save_cycle(record(1))
    run.cycle_path(2).write_text("{not json")
    with pytest.raises(RunDirError, match=r"cycle-0002\.json: cannot read JSON"):
        run.load_cycles()
    run.eval_path("v0").parent.mkdir(parents=True, exist_ok=True)
    run.eval_path("v0").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(RunDirError, match=r"evals/v0\.json: cannot read JSON"):
        run.baseline()
    run.gate_path("v1").write_text("")
    with pytest.raises(RunDirError, match=r"v1-gate\.json: cannot read JSON"):
        run.load_gate("v1")
    (tmp_path / "status.json").write_text("{")
    with pytest.raises(RunDirError, match=r"status\.json: cannot read JSON"):
        run.status()
    (tmp_path / "summary.json").write_text("nope")
    with pytest.raises(RunDirError, match=r"summary\.json: cannot read JSON"):
        run.summary()


def test_a_bad_field_is_named(tmp_path):
    run = RunDir(tmp_path)
    run.cycle_path(2).parent.mkdir(parents=True)
    run.cycle_path(2).write_text(json.dumps({"cycle": 2, "decision": "maybe"}))
    with pytest.raises(RunDirError, match=r"cycle-0002\.json: field 'decision'"):
        run.load_cycles()
    broken = record(2, eval=gate_result()).model_dump(mode="json")
    broken["eval"]["candidate"]["violation_rate"] = "high"
    run.cycle_path(2).write_text(json.dumps(broken))
    with pytest.raises(RunDirError, match=r"field 'eval\.candidate\.violation_rate'"):
        run.load_cycles()
    run.save_eval(policy_eval("v1"))
    data = json.loads(run.eval_path("v1").read_text())
    del data["n_prompts"]
    run.eval_path("v1").write_text(json.dumps(data))
    with pytest.raises(RunDirError, match=r"v1\.json: field 'n_prompts'"):
        run.load_eval("v1")
    (tmp_path / "status.json").write_text(json.dumps({"status": "paused"}))
    with pytest.raises(RunDirError, match=r"status\.json: field 'status'"):
        run.status()
