"""The run report: ``report.md`` and PNG plots made from the per-cycle records of a run.

A run directory holds one JSON file per finished cycle, ``cycles/cycle-0001.json``, … (each a
:class:`CycleRecord`), and optionally ``baseline.json`` (the :class:`PolicyEval` of v0 on the
held-out prompts) and ``summary.json`` (a flat mapping shown as the configuration summary).
:func:`write_report` turns them into ``report.md`` and ``plots/*.png``; the files are written
atomically, so a reader never sees half a report.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from selfimprove.atomic import atomic_write, write_text
from selfimprove.errors import SelfImproveError
from selfimprove.evaluate import EvalResult, PolicyEval

__all__ = [
    "BASELINE_FILE",
    "CYCLES_DIR",
    "PLOTS_DIR",
    "REPORT_FILE",
    "SUMMARY_FILE",
    "CycleRecord",
    "ReportError",
    "cycle_path",
    "load_baseline",
    "load_cycles",
    "load_summary",
    "write_report",
]

CYCLES_DIR = "cycles"
BASELINE_FILE = "baseline.json"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
PLOTS_DIR = "plots"
_CYCLE_FILE = re.compile(r"^cycle-(\d+)\.json$")
# Plot files this module owns; a plot with no data is removed so no stale image is left.
_PLOTS = {
    "violation_rate": "Violation rate of the current policy after each cycle",
    "win_rate": "Candidate win rate against the incumbent (95% Wilson interval)",
    "length": "Mean response length (words)",
    "dpo_margins": "DPO reward margin per cycle",
}
_EXAMPLE_PROMPTS = 2
# mkstemp creates owner-only files; a report is meant to be read by others.


class ReportError(SelfImproveError):
    """A run directory cannot be reported on (no cycles, unreadable records)."""


class CycleRecord(BaseModel):
    """What one finished improvement cycle did; written as ``cycles/cycle-NNNN.json``."""

    model_config = ConfigDict(extra="ignore")
    cycle: int = Field(ge=1, description="1-based cycle number")
    prompts: int = Field(default=0, description="prompts run through the critique graph")
    pairs_kept: int = Field(default=0, description="preference pairs added to the store")
    sft_rows: int = Field(default=0, description="final revisions usable for SFT")
    dropped: dict[str, int] = Field(
        default_factory=dict, description="pairs not kept, by reason (tie, duplicate, …)"
    )
    trained: bool = False
    train_method: str | None = Field(default=None, description="'sft', 'dpo', … or None")
    train_metrics: dict[str, Any] = Field(
        default_factory=dict,
        description="train_loss, rewards/margins, rewards/accuracies, steps, runtime_s, …",
    )
    candidate: str | None = Field(default=None, description="the candidate's version, if any")
    eval: EvalResult | None = Field(default=None, description="the gate's result")
    decision: Literal["promoted", "rejected", "skipped"] = "skipped"
    reasons: list[str] = Field(default_factory=list, description="why rejected or skipped")
    current: str = Field(default="v0", description="the current version after the cycle")
    stage_seconds: dict[str, float] = Field(default_factory=dict)


# ---- loading ----------------------------------------------------------------------------


def cycle_path(run_dir: Path, cycle: int) -> Path:
    """Where the record of ``cycle`` lives."""
    return Path(run_dir) / CYCLES_DIR / f"cycle-{cycle:04d}.json"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: cannot read JSON: {exc}") from exc


def load_cycles(run_dir: Path) -> list[CycleRecord]:
    """The finished cycles of a run, in cycle order (empty when none has finished)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such run directory")
    folder = run_dir / CYCLES_DIR
    paths = sorted(
        (p for p in folder.glob("cycle-*.json") if _CYCLE_FILE.match(p.name)),
        key=lambda p: int(_CYCLE_FILE.match(p.name).group(1)),  # type: ignore[union-attr]
    )
    records = []
    for path in paths:
        try:
            records.append(CycleRecord.model_validate(_read_json(path)))
        except ValidationError as exc:
            raise ReportError(f"{path}: not a cycle record: {exc}") from exc
    return records


def load_baseline(run_dir: Path) -> PolicyEval | None:
    """v0's evaluation (``baseline.json``), or None when the run did not write one."""
    path = Path(run_dir) / BASELINE_FILE
    if not path.is_file():
        return None
    try:
        return PolicyEval.model_validate(_read_json(path))
    except ValidationError as exc:
        raise ReportError(f"{path}: not a policy evaluation: {exc}") from exc


def load_summary(run_dir: Path) -> dict[str, Any]:
    """The run's configuration summary (``summary.json``), or an empty mapping."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        return {}
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


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


def _write_plots(cycles, baseline, plots_dir: Path) -> list[str]:
    """Draw every plot that has data; return the names drawn, delete stale ones."""
    makers = {
        "violation_rate": lambda p: _plot_violations(cycles, baseline, p),
        "win_rate": lambda p: _plot_win_rate(cycles, p),
        "length": lambda p: _plot_length(cycles, p),
        "dpo_margins": lambda p: _plot_margins(cycles, p),
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
    pairs = f"{rec.pairs_kept} / {dropped}" + (f" ({why})" if why else "")
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
    return [str(rec.cycle), str(rec.prompts), pairs, str(rec.sft_rows), train, win, viol,
            length, retention, decision, rec.current]


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


def _markdown(run_dir: Path, cycles, baseline, summary: Mapping[str, Any], plots, plots_rel):
    lines = [f"# Run report: {run_dir.name}", "", "## Configuration", ""]
    config = dict(summary)
    last_eval = next((r.eval for r in reversed(cycles) if r.eval is not None), None)
    if last_eval is not None:
        config.setdefault("held-out prompts", last_eval.candidate.n_prompts)
        gate = {k: v for k, v in last_eval.thresholds.items()
                if k.startswith(("min_", "max_")) and v is not None}
        config.setdefault("gate", ", ".join(f"{k} {v}" for k, v in gate.items()))
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
    lines += ["", "## Plots", ""]
    if plots:
        for name in plots:
            lines += [f"![{_PLOTS[name]}]({plots_rel}/{name}.png)", ""]
    else:
        lines += ["No data to plot yet.", ""]
    lines += ["## Example responses", "", *_examples(cycles, baseline)]
    return "\n".join(lines).rstrip() + "\n"


def write_report(
    run_dir: Path,
    cycles: Sequence[CycleRecord | Mapping[str, Any]],
    out: Path | None = None,
    *,
    baseline: PolicyEval | Mapping[str, Any] | None = None,
    summary: Mapping[str, Any] | None = None,
) -> Path:
    """Write the report (default ``run_dir/report.md``) and its plots; return the report path.

    Plots go to ``run_dir/plots/`` and are linked relative to the report. ``cycles`` are
    :class:`CycleRecord` values or their JSON dicts; ``baseline`` is v0's evaluation;
    ``summary`` is shown as the configuration (constitution, model, …).
    """
    run_dir = Path(run_dir)
    records = sorted(
        (c if isinstance(c, CycleRecord) else CycleRecord.model_validate(c) for c in cycles),
        key=lambda r: r.cycle,
    )
    if baseline is not None and not isinstance(baseline, PolicyEval):
        baseline = PolicyEval.model_validate(baseline)
    out = Path(out) if out is not None else run_dir / REPORT_FILE
    plots_dir = run_dir / PLOTS_DIR
    plots = _write_plots(records, baseline, plots_dir)
    rel = Path(os.path.relpath(plots_dir, out.parent)).as_posix()
    text = _markdown(run_dir, records, baseline, summary or {}, plots, rel)
    write_text(out, text)
    return out
