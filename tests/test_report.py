"""The run report: markdown tables, headline, plots, degeneration, judge, control, the CLI.

The report reads everything through :class:`~selfimprove.rundir.RunDir` (its own loaders are
tested in tests/test_rundir.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from selfimprove.cli import main as cli_main
from selfimprove.cli.report import run_report
from selfimprove.config import GateConfig, RunConfig
from selfimprove.degeneration import DegenerationStats
from selfimprove.gate import GateResult, PolicyEval, wilson_interval
from selfimprove.judges.diagnostics import JudgeDiagnostics
from selfimprove.report import ReportError, write_report
from selfimprove.rundir import CycleRecord, RunDir

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PROMPTS = ["Why is the sky blue?", "Name a prime number.", "What is 2 + 2?", "Define entropy."]
PLOTS = ("violation_rate", "win_rate", "length", "dpo_margins", "degeneration")


def policy_eval(
    version: str, violation_rate: float, words: float, nll: float,
    rates: tuple[float, float | None, float] | None = (0.0, 0.0, 0.0),
    pass_rates: dict[str, float] | None = None,
) -> PolicyEval:
    """``rates``: repetition, truncation and near-empty (None: an old record without them)."""
    deg = None
    if rates is not None:
        rep, trunc, empty = rates
        deg = DegenerationStats(n=len(PROMPTS), repetition_rate=rep, truncation_rate=trunc,
                                near_empty_rate=empty, mean_words=words, median_words=words)
    return PolicyEval(
        version=version, violation_rate=violation_rate, mean_words=words, retention_nll=nll,
        n_prompts=len(PROMPTS), prompts=PROMPTS,
        responses=[f"{version} says: answer {i} | with a pipe" for i in range(len(PROMPTS))],
        # the first prompts pass, as many as the violation rate leaves
        passes_checks=[i < round((1 - violation_rate) * len(PROMPTS))
                       for i in range(len(PROMPTS))],
        check_pass_rates=pass_rates or {}, degeneration=deg,
    )


RELIABLE = JudgeDiagnostics(
    n=4, decided_by_checks=0.25, judged=3, decisive=3, consistent=3, position_consistency=1.0,
    flip_rate=0.0, tie_rate=0.0, abstain_rate=0.0, first_slot_rate=0.5, mean_margin=0.6,
    near_chance=False,
)
NEAR_CHANCE = JudgeDiagnostics(
    n=4, decided_by_checks=0.0, judged=4, decisive=4, consistent=2, position_consistency=0.5,
    flip_rate=0.5, tie_rate=0.5, abstain_rate=0.0, first_slot_rate=1.0, mean_margin=0.05,
    near_chance=True,
)


def eval_result(inc: PolicyEval, cand: PolicyEval, w: int, t: int, lo: int, reasons=(),
                judge: JudgeDiagnostics | None = None):
    n = w + t + lo
    return GateResult(
        candidate=cand, incumbent=inc, win_rate=(w + t / 2) / n,
        win_rate_ci=wilson_interval(w + t / 2, n), wins=w, ties=t, losses=lo, abstains=0,
        length_ratio=cand.mean_words / inc.mean_words,
        retention_increase=(cand.retention_nll - inc.retention_nll) / inc.retention_nll,
        passed=not reasons, reasons=list(reasons), thresholds=GateConfig().model_dump(mode="json"),
        judge=judge,
    )


V0 = policy_eval("v0", 0.5, 40.0, 2.0, (0.0, 0.25, 0.0), {"max_words": 0.5, "no_filler": 0.75})
V1 = policy_eval("v1", 0.25, 30.0, 2.02, (0.25, 0.0, 0.0), {"max_words": 0.75, "no_filler": 1.0})
V2 = policy_eval("v2", 0.5, 50.0, 2.5, (0.5, 0.5, 0.25), {"max_words": 0.5, "no_filler": 0.5})


def cycles(with_margins: bool = True) -> list[dict]:
    """Three cycles: v1 promoted, v2 rejected, then a cycle with too few pairs to train."""
    dpo = {"train_loss": 0.61, "steps": 4, "runtime_s": 50.0, "rewards/accuracies": 0.75}
    if with_margins:
        dpo["rewards/margins"] = 0.123
    records = [
        CycleRecord(
            cycle=1, prompts=16, pairs_kept=9, sft_rows=12, dropped={"tie": 5, "duplicate": 2},
            trained=True, train_method="dpo", train_metrics=dpo, candidate="v1",
            eval=eval_result(V0, V1, 3, 0, 1, judge=RELIABLE), decision="promoted",
            current="v1", stage_seconds={"critique": 120.0, "train": 50.0, "evaluation": 30.0},
        ),
        CycleRecord(
            cycle=2, prompts=16, pairs_kept=7, sft_rows=10, dropped={"tie": 9}, trained=True,
            train_method="dpo",
            train_metrics={**dpo, "rewards/margins": -0.05} if with_margins else dpo,
            candidate="v2",
            eval=eval_result(V1, V2, 1, 0, 3, ["win rate 0.25 < 0.40"], judge=NEAR_CHANCE),
            decision="rejected", reasons=["win rate 0.25 < 0.40"], current="v1",
        ),
        CycleRecord(
            cycle=3, prompts=16, pairs_kept=2, dropped={"tie": 14}, decision="skipped",
            reasons=["2 new pairs < 8 needed to train"], current="v1",
        ),
    ]
    return [r.model_dump(mode="json") for r in records]


SUMMARY = {"constitution": "concise", "model": "smollm2-135m-instruct"}


def make_run(path: Path, baseline: PolicyEval | None = V0, summary: dict | None = None,
             records: list[dict] | None = None) -> RunDir:
    """A run directory as `selfimprove run` leaves it: config and summary, v0's evaluation,
    the cycle records."""
    run = RunDir(path)
    if summary is not None:
        run.create(RunConfig(), summary)
    else:
        run.path.mkdir(parents=True, exist_ok=True)
    if baseline is not None:
        run.save_eval(baseline)
    for rec in records or []:
        run.save_cycle(CycleRecord.model_validate(rec))
    return run


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert len(data) > 5000, f"{path} is suspiciously small ({len(data)} bytes)"


def section(text: str, title: str) -> str:
    """The body of the markdown section ``## title``."""
    return text.split(f"## {title}\n")[1].split("\n## ")[0]


def test_report_has_headline_table_plots_and_examples(tmp_path):
    run_dir = tmp_path / "run-7"
    make_run(run_dir, summary=SUMMARY)
    out = write_report(run_dir, cycles())
    assert out == run_dir / "report.md"
    text = out.read_text()
    assert text.startswith("# Run report: run-7\n")
    assert "| constitution | concise |" in text and "| model | smollm2-135m-instruct |" in text
    assert "| held-out prompts | 4 |" in text
    assert ("- Violation rate: v0 0.50 → v1 0.25 on 4 held-out prompts "
            "(50% relative reduction).") in text
    assert ("- Passes every check: v1 3 vs v0 2 of 4 (gained 1, lost 0; McNemar p = 1): "
            "within what chance gives.") in text
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
    assert "## Loop vs control" not in text  # this run has no control arm
    assert not list(run_dir.glob("**/.*"))  # no temp files left behind
    assert out.stat().st_mode & 0o044 == 0o044  # readable by others, unlike a bare temp file


def test_every_evaluated_version_shows_what_training_did_not_target(tmp_path):
    make_run(tmp_path)
    text = write_report(tmp_path, cycles()).read_text()
    versions = section(text, "Every evaluated version (held-out prompts)")
    rows = [line for line in versions.splitlines() if line.startswith("| ")]
    assert rows == [
        "| version | prompts | violations | repeats itself | hit token cap | near-empty "
        "| mean words | retention NLL |",
        "| v0 | 4 | 0.50 | 0.00 | 0.25 | 0.00 | 40.0 | 2.000 |",
        "| v1 | 4 | 0.25 | 0.25 | 0.00 | 0.00 | 30.0 | 2.020 |",
        "| v2 | 4 | 0.50 | 0.50 | 0.50 | 0.25 | 50.0 | 2.500 |",  # the rejected candidate too
        # pass rate of each check
        "| version | max_words | no_filler |",
        "| v0 | 0.50 | 0.75 |",
        "| v1 | 0.75 | 1.00 |",
        "| v2 | 0.50 | 0.50 |",
    ]
    assert "Pass rate of each check:" in versions
    assert_png(tmp_path / "plots" / "degeneration.png")


def test_checks_named_after_their_kind_are_shown_once(tmp_path):
    """Generated prompt checks carry their kind as id: the per-kind table already has them, the
    per-check table keeps only the checks with names of their own."""
    def with_kinds(e: PolicyEval, ends: float, floor: float) -> PolicyEval:
        return e.model_copy(update={
            "check_pass_rates": {"ends_with": ends, "says_something": floor},
            "kind_pass_rates": {"ends_with": ends, "min_words": floor},
        })
    v0, v1 = with_kinds(V0, 0.25, 1.0), with_kinds(V1, 0.5, 0.75)
    make_run(tmp_path, baseline=v0)
    record = cycles()[0]
    record["eval"] = eval_result(v0, v1, 3, 0, 1).model_dump()
    versions = section(write_report(tmp_path, [record]).read_text(),
                       "Every evaluated version (held-out prompts)")
    rows = [line for line in versions.splitlines() if line.startswith("| ")]
    assert rows[3:] == [
        "| version | ends_with | min_words |", "| v0 | 0.25 | 1.00 |", "| v1 | 0.50 | 0.75 |",
        "| version | says_something |", "| v0 | 1.00 |", "| v1 | 0.75 |",
    ]


def test_versions_without_degeneration_stats_show_dashes_and_no_plot(tmp_path):
    old = {v: policy_eval(v, r, w, n, rates=None) for v, r, w, n in
           (("v0", 0.5, 40.0, 2.0), ("v1", 0.25, 30.0, 2.02))}
    make_run(tmp_path, baseline=old["v0"])
    record = cycles()[0]
    record["eval"] = eval_result(old["v0"], old["v1"], 3, 0, 1).model_dump()
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "degeneration.png").write_bytes(b"stale")
    text = write_report(tmp_path, [record]).read_text()
    versions = section(text, "Every evaluated version (held-out prompts)")
    assert "| v0 | 4 | 0.50 | – | – | – | 40.0 | 2.000 |" in versions
    assert "Pass rate of each check" not in versions  # no check rates recorded
    assert not (tmp_path / "plots" / "degeneration.png").exists()
    assert "degeneration.png" not in text


def test_judge_reliability_per_cycle(tmp_path):
    make_run(tmp_path)
    text = write_report(tmp_path, cycles()).read_text()
    lines = section(text, "Judge reliability (gate)").strip().splitlines()
    assert lines == [
        "- cycle 1: the judge was asked on 3 of 4 pairs; it agreed with itself across orders "
        "on 3 of 3 (100%) and preferred the first slot 50% of the time, with a mean margin of "
        "0.60: its verdicts carry signal. (consistency 1.00, ties 0.00, flips 0.00, abstains "
        "0.00, decided by checks 0.25, mean margin 0.60)",
        "- cycle 2: the judge was asked on 4 of 4 pairs; it agreed with itself across orders "
        "on 2 of 4 (50%) and preferred the first slot 100% of the time, with a mean margin of "
        "0.05: near chance, its verdicts carry little signal. (consistency 0.50, ties 0.50, "
        "flips 0.50, abstains 0.00, decided by checks 0.00, mean margin 0.05)",
    ]  # cycle 3 was not gated


def control_cycles() -> list[dict]:
    """The control arm: its candidate v1 (violation rate 0.40) promoted in cycle 1."""
    c1 = policy_eval("v1", 0.4, 20.0, 2.1, (0.0, 0.0, 0.5))
    rec = CycleRecord(cycle=1, prompts=16, pairs_kept=16, trained=True, train_method="dpo",
                      candidate="v1", eval=eval_result(V0, c1, 2, 0, 2), decision="promoted",
                      current="v1")
    return [rec.model_dump(mode="json")]


def test_loop_vs_control(tmp_path):
    make_run(tmp_path, summary=SUMMARY)
    control = make_run(tmp_path / "control", summary={"control arm": "trim"},
                       records=control_cycles())
    text = write_report(tmp_path, cycles()).read_text()
    body = section(text, "Loop vs control")
    assert "(`trim`)" in body
    rows = [line for line in body.splitlines() if line.startswith("| ")]
    assert rows[1:] == [
        "| loop: v1 | 4 | 0.25 | 0.25 | 0.00 | 0.00 | 30.0 | 2.020 |",
        "| control: v1 | 4 | 0.40 | 0.00 | 0.00 | 0.50 | 20.0 | 2.100 |",
    ]
    assert "On held-out violations the loop beat the control (0.25 vs 0.40)." in body
    assert ("Prompt by prompt: loop v1 3 vs control v1 2 of 4 (gained 1, lost 0; McNemar "
            "p = 1): within what chance gives." in body)
    # a control that does better is reported as such
    better = control_cycles()
    better[0]["eval"]["candidate"]["violation_rate"] = 0.1
    control.save_cycle(CycleRecord.model_validate(better[0]))
    body = section(write_report(tmp_path, cycles()).read_text(), "Loop vs control")
    assert "the loop did not beat the control (0.25 vs 0.10)" in body


def test_control_without_finished_cycles_says_so(tmp_path):
    make_run(tmp_path)
    make_run(tmp_path / "control", summary={"control arm": "best_of_checks"})
    body = section(write_report(tmp_path, cycles()).read_text(), "Loop vs control")
    assert "(`best_of_checks`)" in body
    assert "The control arm has not finished a cycle yet." in body


def test_regenerating_is_idempotent(tmp_path):
    make_run(tmp_path, summary=SUMMARY)
    first = write_report(tmp_path, cycles())
    before = {p.name: p.read_bytes() for p in [first, *sorted((tmp_path / "plots").iterdir())]}
    second = write_report(RunDir(tmp_path), cycles())  # a RunDir works as well as a path
    after = {p.name: p.read_bytes() for p in [second, *sorted((tmp_path / "plots").iterdir())]}
    assert second == first
    assert after == before
    assert sorted(before) == sorted(["report.md", *(f"{n}.png" for n in PLOTS)])


def test_records_are_read_from_the_run_dir_by_default(tmp_path):
    make_run(tmp_path, summary=SUMMARY, records=cycles())
    given = write_report(tmp_path, cycles()).read_text()
    # records read back from disk (their JSON keys sorted) give the same report
    assert write_report(tmp_path).read_text() == given
    assert "| gate | min_win_rate 0.4, max_violation_rate_delta 0.0, max_length_ratio" in given


def test_missing_margins_skip_their_plot_and_remove_a_stale_one(tmp_path):
    make_run(tmp_path)
    write_report(tmp_path, cycles(with_margins=True))
    assert (tmp_path / "plots" / "dpo_margins.png").is_file()
    text = write_report(tmp_path, cycles(with_margins=False)).read_text()
    assert not (tmp_path / "plots" / "dpo_margins.png").exists()
    assert "dpo_margins" not in text and "margin" not in section(text, "Cycles")
    assert "No configuration summary was recorded." not in text  # the gate is summarised


def test_training_summary_keys_are_understood(tmp_path):
    # the trainer's summary writes rewards_margins / final_loss instead of the TRL names
    make_run(tmp_path)
    records = cycles(with_margins=False)
    records[0]["train_metrics"] = {"final_loss": 0.5, "rewards_margins": 0.2}
    text = write_report(tmp_path, records).read_text()
    assert "dpo: loss 0.500, margin +0.200" in text
    assert_png(tmp_path / "plots" / "dpo_margins.png")


def test_report_without_evaluations_says_so(tmp_path):
    records = [CycleRecord(cycle=1, prompts=8, pairs_kept=1, reasons=["too few pairs"])]
    text = write_report(tmp_path, records).read_text()
    assert "No data to plot yet." in text
    assert "- Violation rate: not measured" in text
    assert "No recorded responses to show." in text
    assert "No version was evaluated." in text
    assert "The gate's judge was not run yet." in text
    assert "No configuration summary was recorded." in text
    assert not (tmp_path / "plots").exists() or not list((tmp_path / "plots").iterdir())


def test_nothing_promoted_shows_last_candidate(tmp_path):
    make_run(tmp_path)
    records = cycles()[1:2]
    records[0]["eval"] = eval_result(V0, V2, 0, 1, 3, ["win rate 0.12 < 0.40"]).model_dump()
    records[0]["current"] = "v0"
    text = write_report(tmp_path, records).read_text()
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
    make_run(run_dir)
    out = write_report(run_dir, cycles(), tmp_path / "docs" / "report.md")
    text = out.read_text()
    assert "(../run/plots/win_rate.png)" in text
    assert (out.parent / "../run/plots/win_rate.png").resolve().is_file()


def test_cli_regenerates_report(tmp_path, capsys):
    make_run(tmp_path, summary=SUMMARY, records=cycles())
    assert run_report(argparse.Namespace(run_dir=tmp_path, out=None)) == 0
    text = (tmp_path / "report.md").read_text()
    assert "| constitution | concise |" in text and "| 3 | 16 |" in text
    assert "| v0 | 4 | 0.50 | 0.00 | 0.25 | 0.00 | 40.0 | 2.000 |" in text  # v0 from evals/
    assert f"wrote {tmp_path / 'report.md'} (3 cycles)" in capsys.readouterr().out
    assert cli_main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "report.md").read_text() == text


def test_cli_out_that_cannot_be_written_is_one_line(tmp_path, capsys):
    make_run(tmp_path, summary=SUMMARY, records=cycles())
    folder = tmp_path / "reports"
    folder.mkdir()
    assert cli_main(["report", str(tmp_path), "--out", str(folder)]) == 2
    assert "--out is a folder; name the report file" in capsys.readouterr().err
    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    assert cli_main(["report", str(tmp_path), "--out", str(a_file / "report.md")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {a_file}") and "Traceback" not in err
    assert a_file.read_text() == "keep"


def test_cli_without_cycles_gives_a_clear_error(tmp_path, capsys):
    with pytest.raises(ReportError, match="no finished cycles to report on"):
        run_report(argparse.Namespace(run_dir=tmp_path, out=None))
    assert cli_main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path}: no finished cycles to report on")
    assert "cycle-0001.json" in err  # where a record was expected
    assert cli_main(["report", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert not (tmp_path / "report.md").exists()


def test_cli_names_a_broken_record(tmp_path, capsys):
    run = make_run(tmp_path, records=cycles()[:1])
    run.cycle_path(2).write_text("{not json")
    assert cli_main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cycle-0002.json: cannot read JSON" in err
    run.cycle_path(2).write_text(json.dumps({"cycle": 2, "decision": "maybe"}))
    assert cli_main(["report", str(tmp_path)]) == 2
    assert "cycle-0002.json: field 'decision'" in capsys.readouterr().err
    assert not (tmp_path / "report.md").exists()


def test_the_eval_table_fits_a_terminal_with_many_check_kinds(monkeypatch, capsys):
    """One column a version: sixteen check kinds as columns ran off an 80-column terminal."""
    from selfimprove.checks import CHECK_KINDS
    from selfimprove.cli.eval import _print_table
    from tests.test_rundir import policy_eval

    evals = [policy_eval(v).model_copy(update={"kind_pass_rates": dict.fromkeys(CHECK_KINDS, 0.5)})
             for v in ("v0", "v1", "v2")]
    monkeypatch.setenv("COLUMNS", "80")
    _print_table(evals, "held-out prompts")
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out  # nothing cut short
    assert all(f"passes {kind}" in out for kind in CHECK_KINDS)
    assert out.count("0.50") == 3 * len(CHECK_KINDS)
