"""Run the improvement cycle durably: config in the run dir, SQLite checkpoints, resume."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from selfimprove.config import RunConfig, load_config
from selfimprove.errors import ConfigError, SelfImproveError
from selfimprove.graph.cycle import build_cycle_graph
from selfimprove.graph.cycle_state import CycleContext
from selfimprove.graph.state import Roles
from selfimprove.nodes.cycle.common import write_json

CONFIG_FILE = "config.yaml"
CHECKPOINTS = "checkpoints.sqlite"
THREAD = {"configurable": {"thread_id": "improvement-cycle"}}


def resolve_prompt_path(cfg: RunConfig, config_path: Path | None) -> RunConfig:
    """Make a relative prompt path absolute: relative to the working directory if it exists
    there, else to the config file's directory. A packaged prompt set's name (``general``) that
    is no such file is kept as it is: `load_prompts` resolves it wherever the run resumes."""
    from selfimprove.sources import packaged_prompts

    path = cfg.prompts.path
    if path is None or Path(path).is_absolute():
        return cfg
    candidates = [Path(path)]
    if config_path is not None:
        candidates.append(config_path.parent / path)
    found = next((p for p in candidates if p.exists()), None)
    if found is None and packaged_prompts(path) is not None:
        return cfg
    if found is None:
        tried = ", ".join(str(p.resolve()) for p in candidates)
        raise ConfigError(config_path or "<config>", f"prompt file not found (tried {tried})",
                          field="prompts.path")
    prompts = cfg.prompts.model_copy(update={"path": str(found.resolve())})
    return cfg.model_copy(update={"prompts": prompts})


def start_run_dir(run_dir: Path, cfg: RunConfig) -> None:
    """Write the run's config; refuse a directory that already holds a run."""
    if (run_dir / CONFIG_FILE).exists():
        raise SelfImproveError(
            f"{run_dir} already holds a run; continue it with `selfimprove run --resume "
            f"{run_dir}` or choose another --run-dir"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    tmp = run_dir / f".{CONFIG_FILE}.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(run_dir / CONFIG_FILE)
    summary = {
        "constitution": cfg.critique.constitution,
        "model": cfg.critique.roles.policy.backend.model if cfg.critique.roles.policy.backend
        else None,
        "cycles": cfg.cycles,
        "prompts per cycle": cfg.batch_size,
        "training": "+".join(cfg.schedule.methods),
        "seed": cfg.seed,
    }
    write_json(run_dir / "summary.json", summary)


def load_run_config(run_dir: Path) -> RunConfig:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise SelfImproveError(f"{run_dir} holds no run to resume (no {CONFIG_FILE})")
    return load_config(path, RunConfig)


def load_run_prompts(cfg: RunConfig) -> list[tuple[str, str]]:
    from selfimprove.sources import load_dataset_prompts, load_prompts

    if cfg.prompts.path is not None:
        return load_prompts(cfg.prompts.path, cfg.prompts.field)
    assert cfg.prompts.dataset is not None
    return load_dataset_prompts(cfg.prompts.dataset, cfg.prompts.split, cfg.prompts.field)


def build_context(
    cfg: RunConfig,
    run_dir: Path,
    *,
    roles: Roles | None = None,
    trainer: Callable[..., Any] | None = None,
    progress: Callable[[str, str], None] | None = None,
) -> CycleContext:
    from selfimprove.backends.factory import make_roles
    from selfimprove.constitution import load_constitution
    from selfimprove.graph.state import CritiqueContext
    from selfimprove.registry import PolicyRegistry
    from selfimprove.store import PreferenceStore

    constitution = load_constitution(cfg.critique.constitution)
    prompts = load_run_prompts(cfg)
    # The salt comes from the seed, so the held-out split is the same for every run with it.
    store = PreferenceStore(run_dir, heldout_fraction=cfg.heldout_fraction, salt=f"s{cfg.seed}")
    train_prompts, heldout = store.split_prompts(prompts, key=lambda p: p[1])
    if not train_prompts or not heldout:
        raise ConfigError(
            run_dir / CONFIG_FILE,
            f"{len(prompts)} prompts split into {len(train_prompts)} for training and "
            f"{len(heldout)} held out: both need at least one (add prompts or change "
            "heldout_fraction)",
            field="heldout_fraction",
        )
    registry = PolicyRegistry(run_dir, base_model=cfg.critique.roles.policy.backend.model)
    if roles is None:
        roles = make_roles(cfg.critique.roles, registry.current())
    cctx = CritiqueContext(
        constitution=constitution,
        roles=roles,
        max_rounds=cfg.critique.max_rounds,
        principles_per_round=cfg.critique.principles_per_round,
        num_samples=cfg.critique.num_samples,
        judge_logprobs=cfg.critique.judge_logprobs,
        judge_when_checks_decide=cfg.critique.judge_when_checks_decide,
        seed=cfg.seed,
    )
    return CycleContext(
        cfg=cfg,
        run_dir=run_dir,
        store=store,
        registry=registry,
        critique=cctx,
        train_prompts=list(train_prompts),
        heldout_prompts=list(heldout),
        trainer=trainer,
        progress=progress or (lambda stage, msg: None),
    )


async def run_cycles(ctx: CycleContext, *, resume: bool = False) -> dict[str, Any]:
    """Run (or continue) the cycle graph to the end; returns the final state."""
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    limit = {"recursion_limit": 16 * ctx.cfg.cycles + 16}
    if not ctx.cfg.durable:
        graph = build_cycle_graph()
        return await graph.ainvoke({"cycle": 0}, {**THREAD, **limit}, context=ctx)
    path = ctx.run_dir / CHECKPOINTS
    async with AsyncSqliteSaver.from_conn_string(str(path)) as saver:
        graph = build_cycle_graph(checkpointer=saver)
        snapshot = await graph.aget_state(THREAD)
        # Resume from the checkpoint whenever one exists; the state says whether it finished.
        started = bool(snapshot.values)
        if started and snapshot.values.get("done") and not snapshot.next:
            ctx.progress("run", "the run had already finished")
            return snapshot.values
        if started and not resume:
            raise SelfImproveError(f"{ctx.run_dir} has checkpoints; use --resume")
        write_json(ctx.run_dir / "status.json", {"status": "running"})
        state = await graph.ainvoke(
            None if started else {"cycle": 0},
            {**THREAD, **limit},
            context=ctx,
            durability="sync",
        )
        write_json(ctx.run_dir / "status.json", {"status": "finished"})
        return state


def run(
    cfg: RunConfig | None,
    run_dir: Path,
    *,
    resume: bool = False,
    config_path: Path | None = None,
    roles: Roles | None = None,
    trainer: Callable[..., Any] | None = None,
    progress: Callable[[str, str], None] | None = None,
) -> dict[str, Any]:
    """Start a run in ``run_dir`` with ``cfg``, or continue the one there (``resume``)."""
    run_dir = Path(run_dir)
    if resume:
        cfg = load_run_config(run_dir)
    else:
        assert cfg is not None
        cfg = resolve_prompt_path(cfg, config_path)
        start_run_dir(run_dir, cfg)
    ctx = build_context(cfg, run_dir, roles=roles, trainer=trainer, progress=progress)

    async def main() -> dict[str, Any]:
        from selfimprove.backends.factory import close_roles

        try:
            return await run_cycles(ctx, resume=resume)
        finally:
            if roles is None:
                await close_roles(ctx.critique.roles)

    return asyncio.run(main())
