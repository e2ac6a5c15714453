"""The run report: ``report.md`` and PNG plots made from the records of a run directory.

:func:`write_report` reads the cycle records, v0's evaluation and the configuration summary
through :class:`~selfimprove.rundir.RunDir` (or takes the records the cycle graph already
holds) and writes ``report.md`` and ``plots/*.png`` atomically, so a reader never sees half a
report. Beside what the loop optimises (its checks, its judge) it reports what training did
not target (repetition, truncation, near-empty answers, length, retention), the judge's own
reliability, and the control arm when the run has one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from selfimprove.atomic import atomic_write, write_text
from selfimprove.config import GateConfig
from selfimprove.errors import SelfImproveError
from selfimprove.evaluation import PolicyEval
from selfimprove.paired import PairedPasses, paired_or_none
from selfimprove.rundir import CycleRecord, RunDir

__all__ = ["ReportError", "write_report"]

# Plot files this module owns; a plot with no data is removed so no stale image is left.
_PLOTS = {
    "violation_rate": "Violation rate of the current policy after each cycle",
    "win_rate": "Candidate win rate against the incumbent (95% Wilson interval)",
    "length": "Mean response length (words)",
    "dpo_margins": "DPO reward margin per cycle",
    "degeneration": "Repetition, truncation and near-empty rates of every evaluated version",
}
_EXAMPLE_PROMPTS = 2
# mkstemp creates owner-only files; a report is meant to be read by others.


class ReportError(SelfImproveError):
    """A run directory cannot be reported on (no cycles, unreadable records)."""


# ---- derived series ---------------------------------------------------------------------


def _metric(metrics: Mapping[str, Any], *names: str) -> float | None:
    """First finite number among ``names``; training writes ``rewards/margins`` or
    ``rewards_margins`` depending on where the metrics were summarised."""
    for name in names:
        value = metrics.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = float(value)
            if value == value and value not in (float("inf"), float("-inf")):
                return value
    return None


def _margin(rec: CycleRecord) -> float | None:
    return _metric(rec.train_metrics, "rewards/margins", "rewards_margins")


def _loss(rec: CycleRecord) -> float | None:
    return _metric(rec.train_metrics, "train_loss", "final_loss", "loss")


def _known_evals(
    cycles: Sequence[CycleRecord], baseline: PolicyEval | None
) -> dict[str, PolicyEval]:
    """The latest evaluation seen of each version."""
    evals: dict[str, PolicyEval] = {}
    if baseline is not None:
        evals[baseline.version] = baseline
    for rec in cycles:
        if rec.eval is not None:
            evals.setdefault(rec.eval.incumbent.version, rec.eval.incumbent)
            evals[rec.eval.candidate.version] = rec.eval.candidate
    return evals


def _start_eval(cycles: Sequence[CycleRecord], baseline: PolicyEval | None) -> PolicyEval | None:
    """The policy the run started from (v0 on a new run): the baseline, else the first
    evaluated incumbent."""
    if baseline is not None:
        return baseline
    return next((rec.eval.incumbent for rec in cycles if rec.eval is not None), None)


def _current_series(
    cycles: Sequence[CycleRecord], baseline: PolicyEval | None
) -> list[tuple[int, str, float | None]]:
    """(cycle, current version, its violation rate) from the start (cycle 0) to the last."""
    v0 = _start_eval(cycles, baseline)
    evals = _known_evals(cycles, baseline)
    series = [(0, v0.version if v0 else "v0", v0.violation_rate if v0 else None)]
    for rec in cycles:
        known = evals.get(rec.current)
        series.append((rec.cycle, rec.current, known.violation_rate if known else None))
    return series


# ---- plots ------------------------------------------------------------------------------


def _figure():
    # Figure + Agg canvas directly: no pyplot state, no global backend switch for the caller.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", metadata={"Software": None}))


def _plot_violations(cycles, baseline, path: Path) -> bool:
    series = [(c, v, r) for c, v, r in _current_series(cycles, baseline) if r is not None]
    cands = [(rec.cycle, rec.eval.candidate.violation_rate, rec.decision)
             for rec in cycles if rec.eval is not None]
    if not series and not cands:
        return False
    fig, ax = _figure()
    if series:
        ax.plot([c for c, _, _ in series], [r for _, _, r in series], "o-", color="tab:blue",
                label="current policy")
        for c, v, r in series:
            ax.annotate(v, (c, r), textcoords="offset points", xytext=(0, 6), ha="center",
                        fontsize=8)
    for decision, marker, color in (("promoted", "^", "tab:green"), ("rejected", "x", "tab:red")):
        pts = [(c, r) for c, r, d in cands if d == decision]
        if pts:
            ax.scatter(*zip(*pts, strict=True), marker=marker, color=color,
                       label=f"candidate ({decision})", zorder=3)
    ax.set(xlabel="cycle (0 = start of the run)", ylabel="violation rate", ylim=(-0.02, 1.02),
           title="Hard-check violation rate on held-out prompts")
    ax.set_xticks(sorted({c for c, _, _ in series} | {c for c, _, _ in cands}))
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


def _plot_win_rate(cycles, path: Path) -> bool:
    pts = [(rec.cycle, rec.eval) for rec in cycles
           if rec.eval is not None and rec.eval.win_rate is not None]
    if not pts:
        return False
    fig, ax = _figure()
    xs = [c for c, _ in pts]
    ys = [e.win_rate for _, e in pts]
    lo = [e.win_rate - e.win_rate_ci[0] for _, e in pts]
    hi = [e.win_rate_ci[1] - e.win_rate for _, e in pts]
    ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=4, color="tab:blue", label="win rate")
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1, label="parity")
    threshold = pts[-1][1].thresholds.get("min_win_rate")
    if isinstance(threshold, int | float):
        ax.axhline(threshold, color="tab:red", linestyle="--", linewidth=1,
                   label=f"gate ({threshold:.2f})")
    ax.set(xlabel="cycle", ylabel="win rate vs incumbent", ylim=(-0.02, 1.02),
           title="Candidate win rate (ties count half)")
    ax.set_xticks(xs)
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


def _plot_length(cycles, path: Path) -> bool:
    pts = [(rec.cycle, rec.eval) for rec in cycles if rec.eval is not None]
    if not pts:
        return False
    fig, ax = _figure()
    xs = [c for c, _ in pts]
    ax.plot(xs, [e.incumbent.mean_words for _, e in pts], "s--", color="grey", label="incumbent")
    ax.plot(xs, [e.candidate.mean_words for _, e in pts], "o-", color="tab:blue",
            label="candidate")
    ax.set(xlabel="cycle", ylabel="mean words", title="Mean response length")
    ax.set_ylim(bottom=0)
    ax.set_xticks(xs)
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


def _plot_margins(cycles, path: Path) -> bool:
    pts = [(rec.cycle, m) for rec in cycles if (m := _margin(rec)) is not None]
    if not pts:
        return False
    fig, ax = _figure()
    ax.plot(*zip(*pts, strict=True), "o-", color="tab:purple")
    ax.axhline(0.0, color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="cycle", ylabel="rewards/margins (mean)", title="DPO reward margin")
    ax.set_xticks([c for c, _ in pts])
    _save(fig, path)
    return True


def _version_number(version: str) -> int:
    digits = version.lstrip("v")
    return int(digits) if digits.isdigit() else 0


def _plot_degeneration(cycles, baseline, path: Path) -> bool:
    evals = sorted(
        (e for e in _known_evals(cycles, baseline).values() if e.degeneration is not None),
        key=lambda e: _version_number(e.version),
    )
    if not evals:
        return False
    fig, ax = _figure()
    xs = list(range(len(evals)))
    for field, label, style in (("repetition_rate", "repeats itself", "o-"),
                                ("truncation_rate", "hit the token cap", "s--"),
                                ("near_empty_rate", "near-empty", "^:")):
        ys = [getattr(e.degeneration, field) for e in evals]
        ax.plot(xs, [y if y is not None else float("nan") for y in ys], style, label=label)
    ax.set_xticks(xs, [e.version for e in evals])
    ax.set(xlabel="version", ylabel="share of held-out answers", ylim=(-0.02, 1.02),
           title="Degeneration of every evaluated version")
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


def _write_plots(cycles, baseline, plots_dir: Path) -> list[str]:
    """Draw every plot that has data; return the names drawn, delete stale ones."""
    makers = {
        "violation_rate": lambda p: _plot_violations(cycles, baseline, p),
        "win_rate": lambda p: _plot_win_rate(cycles, p),
        "length": lambda p: _plot_length(cycles, p),
        "dpo_margins": lambda p: _plot_margins(cycles, p),
        "degeneration": lambda p: _plot_degeneration(cycles, baseline, p),
    }
    drawn = []
    for name, make in makers.items():
        path = plots_dir / f"{name}.png"
        if make(path):
            drawn.append(name)
        else:
            path.unlink(missing_ok=True)
    return drawn


# ---- markdown ---------------------------------------------------------------------------


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "–" if value is None else format(value, fmt)


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _cycle_row(rec: CycleRecord) -> list[str]:
    dropped = sum(rec.dropped.values())
    why = ", ".join(f"{k} {v}" for k, v in sorted(rec.dropped.items()) if v)
    # which strategy produced the kept pairs (critique-and-revise vs best-of-N sampling)
    made_by = ", ".join(f"{k} {v}" for k, v in sorted(rec.kept.items())
                        if v and not k.startswith("sft"))
    pairs = (f"{rec.pairs_kept}" + (f" ({made_by})" if made_by else "") + f" / {dropped}"
             + (f" ({why})" if why else ""))
    if rec.trained:
        train = f"{rec.train_method or '?'}: loss {_num(_loss(rec), '.3f')}"
        if (margin := _margin(rec)) is not None:
            train += f", margin {margin:+.3f}"
    else:
        train = "not trained"
    e = rec.eval
    if e is None:
        win = viol = length = retention = "–"
    else:
        lo, hi = e.win_rate_ci
        win = "–" if e.win_rate is None else f"{e.win_rate:.2f} [{lo:.2f}, {hi:.2f}]"
        win += f" ({e.wins}/{e.ties}/{e.losses}" + (f", {e.abstains} abst." if e.abstains else "")
        win += ")"
        viol = f"{e.incumbent.violation_rate:.2f} → {e.candidate.violation_rate:.2f}"
        length = _num(e.length_ratio)
        retention = _num(e.retention_increase, "+.1%")
    decision = rec.decision + (f" {rec.candidate}" if rec.candidate else "")
    if rec.reasons:
        decision += ": " + "; ".join(rec.reasons)
    sft = str(rec.sft_rows)
    sources = [f"{n} {label}" for key, label in _SFT_SOURCES.items()
               if (n := rec.kept.get(key, 0))]
    if sources:
        sft += f" ({', '.join(sources)})"
    return [str(rec.cycle), str(rec.prompts), pairs, sft, train, win, viol,
            length, retention, decision, rec.current]


#: where SFT rows that are not the reviser model's revisions came from, as the report says it
_SFT_SOURCES = {
    "sft_repaired_revision": "repaired",
    "sft_sample_revision": "passing samples",
    "sft_best_sample": "best samples",
}


def _headline(cycles: Sequence[CycleRecord], baseline: PolicyEval | None) -> list[str]:
    v0 = _start_eval(cycles, baseline)
    last = cycles[-1].current if cycles else "v0"
    latest = _known_evals(cycles, baseline).get(last)
    promoted = sum(rec.decision == "promoted" for rec in cycles)
    lines = [f"- Cycles: {len(cycles)}; promoted {promoted}, current version **{last}**."]
    if v0 is None or latest is None:
        lines.append("- Violation rate: not measured (no evaluation of the starting or of the "
                     "current version was recorded).")
        return lines
    n, name = latest.n_prompts, v0.version
    if last == name:
        lines.append(f"- Violation rate: {name} {v0.violation_rate:.2f} on {n} held-out prompts; "
                     "no candidate was promoted, so the current policy is unchanged.")
    else:
        if v0.violation_rate > 0:
            reduction = (v0.violation_rate - latest.violation_rate) / v0.violation_rate
            rel = (f"{reduction:.0%} relative reduction" if reduction >= 0
                   else f"{-reduction:.0%} relative increase")
        else:
            rel = f"{name} had no violations"
        lines.append(
            f"- Violation rate: {name} {v0.violation_rate:.2f} → {last} "
            f"{latest.violation_rate:.2f} "
            f"on {n} held-out prompts ({rel})."
        )
    if v0.retention_nll is not None and latest.retention_nll is not None:
        inc = (latest.retention_nll - v0.retention_nll) / v0.retention_nll
        lines.append(
            f"- Retention (mean NLL per token on general text): {name} {v0.retention_nll:.3f} → "
            f"{last} {latest.retention_nll:.3f} ({inc:+.1%})."
        )
    else:
        lines.append("- Retention: not measured.")
    lines.append(
        f"- Mean length: {name} {v0.mean_words:.1f} words → {last} {latest.mean_words:.1f} words."
    )
    if last != name and (paired := paired_or_none(v0, latest)) is not None:
        lines.append(f"- Passes every check: {paired.summary()}{_chance(paired)}.")
    return lines


def _chance(paired: PairedPasses) -> str:
    return ": within what chance gives" if paired.p_value >= 0.05 else ""


def _version_rows(evals: Sequence[PolicyEval]) -> list[list[str]]:
    rows = []
    for e in evals:
        d = e.degeneration
        rows.append([
            e.version, str(e.n_prompts), _num(e.violation_rate),
            _num(d.repetition_rate if d else None), _num(d.truncation_rate if d else None),
            _num(d.near_empty_rate if d else None), _num(e.mean_words, ".1f"),
            _num(e.retention_nll, ".3f"),
        ])
    return rows


_VERSION_HEADER = ["version", "prompts", "violations", "repeats itself", "hit token cap",
                   "near-empty", "mean words", "retention NLL"]


def _versions(cycles: Sequence[CycleRecord], baseline: PolicyEval | None) -> list[str]:
    """Every evaluated version on the held-out prompts, with what training did not target."""
    evals = sorted(_known_evals(cycles, baseline).values(),
                   key=lambda e: _version_number(e.version))
    if not evals:
        return ["No version was evaluated."]
    lines = _table(_VERSION_HEADER, _version_rows(evals))
    kinds = sorted({k for e in evals for k in e.kind_pass_rates})
    if kinds:
        lines += ["", "Pass rate of each check kind (prompt checks count on their own prompts):",
                  ""]
        lines += _table(["version", *kinds], (
            [e.version, *(_num(e.kind_pass_rates.get(k)) for k in kinds)] for e in evals
        ))
    # A check named after its kind (as generated prompt checks are) is already a column above.
    ids = sorted({cid for e in evals for cid in e.check_pass_rates} - set(kinds))
    if ids:
        lines += ["", "Pass rate of each check:", ""]
        lines += _table(["version", *ids], (
            [e.version, *(_num(e.check_pass_rates.get(i)) for i in ids)] for e in evals
        ))
    return lines


def _transfer_lines(run: RunDir) -> list[str]:
    """Each transfer set (prompts of kinds training never saw): v0 and each arm's current
    version, and whether the arms' versions pass fewer of its prompts than v0."""
    arms = [("loop", run.transfer_sets())]
    if run.control.holds_run():
        arms.append(("control", run.control.transfer_sets()))
    names = sorted({name for _, sets in arms for name in sets})
    if not names:
        return []
    lines = ["", "## Prompt sets training never saw", "",
             "Prompts of kinds or topics no training prompt had (`transfer_prompts`), answered "
             "by v0 and each arm's current version after the cycles, with their own checks."]
    for name in names:
        labelled: dict[str, PolicyEval] = {}
        for arm, sets in arms:
            for e in sets.get(name, []):
                label = "v0" if e.version == "v0" else f"{arm}: {e.version}"
                labelled.setdefault(label, e)
        rows = [[label, *row[1:-1]] for label, row in
                zip(labelled, _version_rows(list(labelled.values())), strict=True)]
        lines += ["", f"### {name}", "", *_table(["version", *_VERSION_HEADER[1:-1]], rows)]
        kinds = sorted({k for e in labelled.values() for k in e.kind_pass_rates})
        if kinds:
            lines += ["", "Pass rate of each check kind:", ""]
            lines += _table(["version", *kinds], (
                [label, *(_num(e.kind_pass_rates.get(k)) for k in kinds)]
                for label, e in labelled.items()
            ))
        v0 = labelled.get("v0")
        if v0 is not None:
            base = sum(v0.passes_checks)
            lines.append("")
            for label, e in labelled.items():
                if label == "v0":
                    continue
                passed = sum(e.passes_checks)
                moved = "fell" if passed < base else "rose" if passed > base else "held"
                paired = paired_or_none(v0, e)
                detail = f" ({paired.split()}{_chance(paired)})" if paired else ""
                lines.append(f"- {label} passes every check on {passed} of {e.n_prompts} "
                             f"prompts, v0 on {base}: {moved}{detail}.")
    return lines


def _judge_lines(cycles: Sequence[CycleRecord]) -> list[str]:
    lines = []
    for rec in cycles:
        if rec.eval is None or rec.eval.judge is None:
            continue
        j = rec.eval.judge
        lines.append(
            f"- cycle {rec.cycle}: {j.summary()} (consistency {_num(j.position_consistency)}, "
            f"ties {j.tie_rate:.2f}, flips {j.flip_rate:.2f}, abstains {j.abstain_rate:.2f}, "
            f"decided by checks {j.decided_by_checks:.2f}, mean margin {_num(j.mean_margin)})"
        )
    return lines or ["The gate's judge was not run yet."]


def _current_eval(cycles, baseline) -> PolicyEval | None:
    last = cycles[-1].current if cycles else "v0"
    return _known_evals(cycles, baseline).get(last)


def _control_lines(run: RunDir, cycles, baseline) -> list[str]:
    control = run.control
    if not control.holds_run():
        return []
    ccycles = control.load_cycles()
    lines = ["", "## Loop vs control", ""]
    summary = control.summary()
    lines.append(
        "The control arm ran the same cycles on the same prompts and seed, with the critique "
        "replaced by the cheapest thing that could explain the result "
        f"(`{summary.get('control arm', '?')}`), and the same training and gate."
    )
    loop_eval = _current_eval(cycles, baseline)
    ctrl_eval = _current_eval(ccycles, control.baseline())
    if not ccycles or loop_eval is None or ctrl_eval is None:
        return [*lines, "", "The control arm has not finished a cycle yet."]
    rows = _version_rows([loop_eval, ctrl_eval])
    rows[0][0], rows[1][0] = f"loop: {loop_eval.version}", f"control: {ctrl_eval.version}"
    lines += ["", *_table(["arm: current version", *_VERSION_HEADER[1:]], rows), ""]
    diff = ctrl_eval.violation_rate - loop_eval.violation_rate
    verdict = ("the loop beat the control" if diff > 0 else
               "the loop did not beat the control" if diff < 0 else "loop and control tied")
    lines.append(f"On held-out violations {verdict} ({loop_eval.violation_rate:.2f} vs "
                 f"{ctrl_eval.violation_rate:.2f}).")
    if (paired := paired_or_none(ctrl_eval, loop_eval)) is not None:
        paired = paired.model_copy(update={"base": f"control {ctrl_eval.version}",
                                           "other": f"loop {loop_eval.version}"})
        lines.append(f"Prompt by prompt: {paired.summary()}{_chance(paired)}.")
    return lines


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in (text.strip() or "(empty)").splitlines())


def _examples(cycles: Sequence[CycleRecord], baseline: PolicyEval | None) -> list[str]:
    v0 = _start_eval(cycles, baseline)
    last = cycles[-1].current if cycles else "v0"
    other = _known_evals(cycles, baseline).get(last)
    label = last
    if v0 is not None and last == v0.version:
        # Nothing promoted: show the last candidate, so the report still shows what changed.
        rec = next((r for r in reversed(cycles) if r.eval is not None), None)
        other = rec.eval.candidate if rec else None
        label = f"{other.version} (candidate, {rec.decision})" if rec and other else ""
    if v0 is None or other is None or not v0.prompts:
        return ["No recorded responses to show."]
    lines: list[str] = []
    shown = 0
    for i, prompt in enumerate(v0.prompts):
        if shown == _EXAMPLE_PROMPTS:
            break
        if i >= len(v0.responses) or prompt not in other.prompts:
            continue
        j = other.prompts.index(prompt)
        if j >= len(other.responses):
            continue
        shown += 1
        lines += [f"### Prompt {shown}", "", _quote(prompt), "", f"**{v0.version}:**", "",
                  _quote(v0.responses[i]), "", f"**{label}:**", "", _quote(other.responses[j]),
                  ""]
    return lines or ["No recorded responses to show."]


def _markdown(run: RunDir, cycles, baseline, summary: Mapping[str, Any], plots, plots_rel):
    lines = [f"# Run report: {run.path.name}", "", "## Configuration", ""]
    config = dict(summary)
    last_eval = next((r.eval for r in reversed(cycles) if r.eval is not None), None)
    if last_eval is not None:
        config.setdefault("held-out prompts", last_eval.candidate.n_prompts)
        # In GateConfig's order: records read back from disk have their keys sorted, records
        # the cycle graph holds do not, and the report must not depend on where they came from.
        order = {name: i for i, name in enumerate(GateConfig.model_fields)}
        gate = sorted(
            ((k, v) for k, v in last_eval.thresholds.items()
             if k.startswith(("min_", "max_")) and v is not None),
            key=lambda kv: (order.get(kv[0], len(order)), kv[0]),
        )
        config.setdefault("gate", ", ".join(f"{k} {v}" for k, v in gate))
    if config:
        lines += _table(["setting", "value"], [(k, v) for k, v in config.items()])
    else:
        lines.append("No configuration summary was recorded.")
    lines += ["", "## Headline", "", *_headline(cycles, baseline), "", "## Cycles", ""]
    header = ["cycle", "prompts", "pairs kept / dropped", "SFT rows", "training",
              "win rate [95% CI] (W/T/L)", "violations inc → cand", "length ratio",
              "retention Δ", "decision", "current"]
    lines += _table(header, (_cycle_row(rec) for rec in cycles))
    notes = [f"- cycle {rec.cycle}: {note}" for rec in cycles if rec.eval
             for note in rec.eval.unchecked]
    if notes:
        lines += ["", "Not measured:", "", *notes]
    lines += ["", "## Every evaluated version (held-out prompts)", "", *_versions(cycles, baseline)]
    lines += _transfer_lines(run)
    lines += ["", "## Judge reliability (gate)", "", *_judge_lines(cycles)]
    lines += _control_lines(run, cycles, baseline)
    lines += ["", "## Plots", ""]
    if plots:
        for name in plots:
            lines += [f"![{_PLOTS[name]}]({plots_rel}/{name}.png)", ""]
    else:
        lines += ["No data to plot yet.", ""]
    lines += ["## Example responses", "", *_examples(cycles, baseline)]
    return "\n".join(lines).rstrip() + "\n"


def write_report(
    run: RunDir | Path | str,
    cycles: Sequence[CycleRecord | Mapping[str, Any]] | None = None,
    out: Path | None = None,
) -> Path:
    """Write the report (default ``RUN_DIR/report.md``) and its plots; return the report path.

    ``cycles`` are the records the caller already holds (default: read from the run
    directory). Plots go to ``RUN_DIR/plots/`` and are linked relative to the report.
    """
    run = run if isinstance(run, RunDir) else RunDir(run)
    if cycles is None:
        cycles = run.load_cycles()
    records = sorted(
        (c if isinstance(c, CycleRecord) else CycleRecord.model_validate(c) for c in cycles),
        key=lambda r: r.cycle,
    )
    baseline = run.baseline()
    out = Path(out) if out is not None else run.report_path
    plots = _write_plots(records, baseline, run.plots_dir)
    rel = Path(os.path.relpath(run.plots_dir, out.parent)).as_posix()
    text = _markdown(run, records, baseline, run.summary(), plots, rel)
    write_text(out, text)
    return out
