"""Human-readable rendering of critique results for the terminal."""

from __future__ import annotations

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from selfimprove.types import CheckResult, CritiqueResult, Verdict

_console = Console(highlight=False)


def _checks(checks: list[CheckResult]) -> Text:
    if not checks:
        return Text("no executable checks", style="dim")
    out = Text()
    for c in checks:
        mark, style = ("✓", "green") if c.passed else ("✗", "red" if c.hard else "yellow")
        out.append(f"{mark} {c.check_id}", style=style)
        out.append(f" ({c.detail})  " if c.detail else "  ", style="dim")
    return out


def _verdict(v: Verdict | None) -> str:
    if v is None:
        return "no revision to judge"
    label = {"a": "original", "b": "revision"}.get(v.winner, v.winner)
    soft = "n/a" if v.p_b is None else f"{v.p_b:.2f}"
    orders = ", ".join(
        f"{o.first} first: p={o.p_first:.2f} ({o.method})" if o.p_first is not None
        else f"{o.first} first: abstain" for o in v.orders
    )
    return f"winner: {label}  decided by: {v.decided_by}  P(revision better)={soft}  [{orders}]"


def print_result(r: CritiqueResult, console: Console | None = None) -> None:
    console = console or _console
    console.rule(f"[bold]{r.prompt_id}[/bold]  {r.constitution} · policy {r.policy_version}")
    console.print(Text("Prompt: ", style="bold") + Text(r.prompt))
    console.print(Panel(r.first_response or "(empty)", title="first response", title_align="left"))
    for rec in r.rounds:
        console.print(Text(f"round {rec.round + 1} checks: ", style="bold") + _checks(rec.checks))
        if rec.critique:
            head = f"critique ({', '.join(rec.critique.principle_ids)})"
            console.print(Panel(rec.critique.text or "(empty)", title=head, title_align="left"))
        console.print(Panel(rec.revision or "(empty)", title=f"revision {rec.round + 1}",
                            title_align="left"))
    console.print(Text("final checks: ", style="bold") + _checks(r.final_checks))
    console.print(Text("judge: ", style="bold") + Text(_verdict(r.verdict)))
    if r.samples:
        scores = ", ".join("abstain" if s is None else f"{s:.2f}" for s in r.sample_scores)
        console.print(Text(f"best-of-{len(r.samples)} sample scores: {scores}", style="dim"))
