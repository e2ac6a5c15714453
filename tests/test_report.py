"""The run report: markdown table, headline, plots, loading cycle records and the CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from selfimprove.cli import main as cli_main
from selfimprove.cli.report import run_report
from selfimprove.evaluate import EvalResult, GateConfig, PolicyEval, wilson_interval
from selfimprove.report import (
    CycleRecord,
    ReportError,
    load_baseline,
    load_cycles,
    load_summary,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PROMPTS = ["Why is the sky blue?", "Name a prime number.", "What is 2 + 2?", "Define entropy."]
PLOTS = ("violation_rate", "win_rate", "length", "dpo_margins")


def policy_eval(version: str, violation_rate: float, words: float, nll: float) -> PolicyEval:
    return PolicyEval(
        version=version, violation_rate=violation_rate, mean_words=words, retention_nll=nll,
        n_prompts=len(PROMPTS), prompts=PROMPTS,
        responses=[f"{version} says: answer {i} | with a pipe" for i in range(len(PROMPTS))],
        passes_checks=[True] * len(PROMPTS),
    )


def eval_result(inc: PolicyEval, cand: PolicyEval, w: int, t: int, lo: int, reasons=()):
    n = w + t + lo
    return EvalResult(
        candidate=cand, incumbent=inc, win_rate=(w + t / 2) / n,
        win_rate_ci=wilson_interval(w + t / 2, n), wins=w, ties=t, losses=lo, abstains=0,
        length_ratio=cand.mean_words / inc.mean_words,
        retention_increase=(cand.retention_nll - inc.retention_nll) / inc.retention_nll,
        passed=not reasons, reasons=list(reasons), thresholds=GateConfig().model_dump(mode="json"),
    )


V0 = policy_eval("v0", 0.5, 40.0, 2.0)
V1 = policy_eval("v1", 0.25, 30.0, 2.02)
V2 = policy_eval("v2", 0.5, 50.0, 2.5)


def cycles(with_margins: bool = True) -> list[dict]:
    """Three cycles: v1 promoted, v2 rejected, then a cycle with too few pairs to train."""
    dpo = {"train_loss": 0.61, "steps": 4, "runtime_s": 50.0, "rewards/accuracies": 0.75}
    if with_margins:
        dpo["rewards/margins"] = 0.123
    records = [
        CycleRecord(
            cycle=1, prompts=16, pairs_kept=9, sft_rows=12, dropped={"tie": 5, "duplicate": 2},
            trained=True, train_method="dpo", train_metrics=dpo, candidate="v1",
            eval=eval_result(V0, V1, 3, 0, 1), decision="promoted", current="v1",
            stage_seconds={"critique": 120.0, "train": 50.0, "evaluation": 30.0},
        ),
        CycleRecord(
            cycle=2, prompts=16, pairs_kept=7, sft_rows=10, dropped={"tie": 9}, trained=True,
            train_method="dpo",
            train_metrics={**dpo, "rewards/margins": -0.05} if with_margins else dpo,
            candidate="v2", eval=eval_result(V1, V2, 1, 0, 3, ["win rate 0.25 < 0.40"]),
            decision="rejected", reasons=["win rate 0.25 < 0.40"], current="v1",
        ),
        CycleRecord(
            cycle=3, prompts=16, pairs_kept=2, dropped={"tie": 14}, decision="skipped",
            reasons=["2 new pairs < 8 needed to train"], current="v1",
        ),
    ]
    return [r.model_dump(mode="json") for r in records]


SUMMARY = {"constitution": "concise", "model": "smollm2-135m-instruct"}


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert len(data) > 5000, f"{path} is suspiciously small ({len(data)} bytes)"


def test_report_has_headline_table_plots_and_examples(tmp_path):
    run_dir = tmp_path / "run-7"
    run_dir.mkdir()
    out = write_report(run_dir, cycles(), baseline=V0, summary=SUMMARY)
    assert out == run_dir / "report.md"
    text = out.read_text()
    assert text.startswith("# Run report: run-7\n")
    assert "| constitution | concise |" in text and "| model | smollm2-135m-instruct |" in text
    assert "| held-out prompts | 4 |" in text
    assert ("- Violation rate: v0 0.50 → v1 0.25 on 4 held-out prompts "
            "(50% relative reduction).") in text
    assert ("- Retention (mean NLL per token on general text): v0 2.000 → v1 2.020 (+1.0%)."
            in text)
    assert "- Cycles: 3; promoted 1, current version **v1**." in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert rows == [
        "| 1 | 16 | 9 / 7 (duplicate 2, tie 5) | 12 | dpo: loss 0.610, margin +0.123 "
        "| 0.75 [0.30, 0.95] (3/0/1) | 0.50 → 0.25 | 0.75 | +1.0% | promoted v1 | v1 |",
        "| 2 | 16 | 7 / 9 (tie 9) | 10 | dpo: loss 0.610, margin -0.050 "
        "| 0.25 [0.05, 0.70] (1/0/3) | 0.25 → 0.50 | 1.67 | +23.8% "
        "| rejected v2: win rate 0.25 < 0.40 | v1 |",
        "| 3 | 16 | 2 / 14 (tie 14) | 0 | not trained | – | – | – | – "
        "| skipped: 2 new pairs < 8 needed to train | v1 |",
    ]
    for name in PLOTS:
        assert f"(plots/{name}.png)" in text
        assert_png(run_dir / "plots" / f"{name}.png")
    # two example prompts, v0 against the current version, pipes kept verbatim in quotes
    assert "> Why is the sky blue?" in text and "> Name a prime number." in text
    assert "> What is 2 + 2?" not in text
    for version in ("v0", "v1"):
        assert f"> {version} says: answer 1 | with a pipe" in text
    assert not list(run_dir.glob("**/.*"))  # no temp files left behind
    assert out.stat().st_mode & 0o044 == 0o044  # readable by others, unlike a bare temp file


def test_regenerating_is_idempotent(tmp_path):
    first = write_report(tmp_path, cycles(), baseline=V0, summary=SUMMARY)
    before = {p.name: p.read_bytes() for p in [first, *sorted((tmp_path / "plots").iterdir())]}
    second = write_report(tmp_path, cycles(), baseline=V0, summary=SUMMARY)
    after = {p.name: p.read_bytes() for p in [second, *sorted((tmp_path / "plots").iterdir())]}
    assert second == first
    assert after == before
    assert sorted(before) == sorted(["report.md", *(f"{n}.png" for n in PLOTS)])


def test_missing_margins_skip_their_plot_and_remove_a_stale_one(tmp_path):
    write_report(tmp_path, cycles(with_margins=True), baseline=V0)
    assert (tmp_path / "plots" / "dpo_margins.png").is_file()
    text = write_report(tmp_path, cycles(with_margins=False), baseline=V0).read_text()
    assert not (tmp_path / "plots" / "dpo_margins.png").exists()
    assert "dpo_margins" not in text and "margin" not in text.split("## Cycles")[1].split("##")[0]
    assert "No configuration summary was recorded." not in text  # the gate is summarised


def test_training_summary_keys_are_understood(tmp_path):
    # the trainer's summary writes rewards_margins / final_loss instead of the TRL names
    records = cycles(with_margins=False)
    records[0]["train_metrics"] = {"final_loss": 0.5, "rewards_margins": 0.2}
    text = write_report(tmp_path, records, baseline=V0).read_text()
    assert "dpo: loss 0.500, margin +0.200" in text
    assert_png(tmp_path / "plots" / "dpo_margins.png")


def test_report_without_evaluations_says_so(tmp_path):
    records = [CycleRecord(cycle=1, prompts=8, pairs_kept=1, reasons=["too few pairs"])]
    text = write_report(tmp_path, records).read_text()
    assert "No data to plot yet." in text
    assert "- Violation rate: not measured" in text
    assert "No recorded responses to show." in text
    assert not (tmp_path / "plots").exists() or not list((tmp_path / "plots").iterdir())


def test_nothing_promoted_shows_last_candidate(tmp_path):
    records = cycles()[1:2]
    records[0]["eval"] = eval_result(V0, V2, 0, 1, 3, ["win rate 0.12 < 0.40"]).model_dump()
    records[0]["current"] = "v0"
    text = write_report(tmp_path, records, baseline=V0).read_text()
    assert "no candidate was promoted, so the current policy is unchanged" in text
    assert "**v2 (candidate, rejected):**" in text


def test_run_started_from_a_later_version_is_labelled_by_it(tmp_path):
    start = policy_eval("v3", 0.5, 40.0, 2.0)
    record = cycles()[0]
    record["eval"] = eval_result(start, policy_eval("v4", 0.25, 30.0, 2.0), 3, 0, 1).model_dump()
    record["candidate"], record["current"] = "v4", "v4"
    text = write_report(tmp_path, [record]).read_text()  # no baseline: the first incumbent
    assert "- Violation rate: v3 0.50 → v4 0.25 on 4 held-out prompts" in text
    assert "**v3:**" in text and "**v4:**" in text and "v0" not in text


def test_report_elsewhere_links_plots_relatively(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    out = write_report(run_dir, cycles(), tmp_path / "docs" / "report.md", baseline=V0)
    text = out.read_text()
    assert "(../run/plots/win_rate.png)" in text
    assert (out.parent / "../run/plots/win_rate.png").resolve().is_file()


def write_run(run_dir: Path, records: list[dict]) -> None:
    (run_dir / "cycles").mkdir(parents=True)
    for rec in records:
        path = run_dir / "cycles" / f"cycle-{rec['cycle']:04d}.json"
        path.write_text(json.dumps(rec))
    (run_dir / "baseline.json").write_text(V0.model_dump_json())
    (run_dir / "summary.json").write_text(json.dumps(SUMMARY))


def test_load_cycles_orders_by_number_and_reads_baseline(tmp_path):
    records = cycles()
    records[2]["cycle"] = 10  # numeric, not lexical, order
    records[2]["extra_key_from_a_newer_writer"] = 1
    write_run(tmp_path, records)
    (tmp_path / "cycles" / "notes.json").write_text("{}")  # not a cycle record: ignored
    loaded = load_cycles(tmp_path)
    assert [r.cycle for r in loaded] == [1, 2, 10]
    assert loaded[0].eval.candidate == V1
    assert load_baseline(tmp_path) == V0
    assert load_summary(tmp_path) == SUMMARY
    assert load_cycles(tmp_path / "cycles") == []  # a directory without cycles/
    assert load_baseline(tmp_path / "cycles") is None


def test_load_cycles_names_the_broken_file(tmp_path):
    write_run(tmp_path, cycles()[:1])
    broken = tmp_path / "cycles" / "cycle-0002.json"
    broken.write_text("{not json")
    with pytest.raises(ReportError, match="cycle-0002.json: cannot read JSON"):
        load_cycles(tmp_path)
    broken.write_text(json.dumps({"cycle": 2, "decision": "maybe"}))
    with pytest.raises(ReportError, match="cycle-0002.json: not a cycle record"):
        load_cycles(tmp_path)
    with pytest.raises(ReportError, match="no such run directory"):
        load_cycles(tmp_path / "missing")


def test_cli_regenerates_report(tmp_path, capsys):
    write_run(tmp_path, cycles())
    assert run_report(argparse.Namespace(run_dir=tmp_path, out=None)) == 0
    text = (tmp_path / "report.md").read_text()
    assert "| constitution | concise |" in text and "| 3 | 16 |" in text
    assert f"wrote {tmp_path / 'report.md'} (3 cycles)" in capsys.readouterr().out
    assert cli_main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "report.md").read_text() == text


def test_cli_without_cycles_gives_a_clear_error(tmp_path, capsys):
    with pytest.raises(ReportError, match="no finished cycles to report on"):
        run_report(argparse.Namespace(run_dir=tmp_path, out=None))
    assert cli_main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path}: no finished cycles to report on")
    assert cli_main(["report", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert not (tmp_path / "report.md").exists()
