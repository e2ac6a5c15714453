"""Run the improvement cycle durably in a run directory: validate, start or resume, finish.

Everything that can be checked before writing is checked before writing: the constitution,
the prompts and their held-out split, the model. A run that fails later leaves ``status.json``
saying so, and ``--resume`` continues from the last checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfimprove.config import RunConfig
from selfimprove.constitution import Constitution, load_constitution
from selfimprove.errors import ConfigError, SelfImproveError
from selfimprove.improvement_cycle.graph import build_cycle_graph
from selfimprove.improvement_cycle.state import Arm, CycleContext
from selfimprove.roles import Roles
from selfimprove.rundir import RunDir, RunDirError
from selfimprove.sources import PromptRecord
from selfimprove.store import is_heldout, seed_salt
from selfimprove.transfer import evaluate_transfer, load_transfer_sets

log = logging.getLogger(__name__)

__all__ = ["arun", "build_context", "create_run", "load_run_config", "prepare", "run", "run_cycles"]

THREAD = {"configurable": {"thread_id": "improvement-cycle"}}


def resolve_prompt_path(cfg: RunConfig, config_path: Path | None) -> RunConfig:
    """Make relative prompt paths (``prompts.path``, ``transfer_prompts``) absolute: relative
    to the working directory if they exist there, else to the config file's directory; a bare
    name of packaged prompts stays."""
    update: dict[str, Any] = {}
    if cfg.prompts.path is not None:
        path = _resolve(cfg.prompts.path, config_path, "prompts.path")
        update["prompts"] = cfg.prompts.model_copy(update={"path": path})
    update["transfer_prompts"] = [
        _resolve(p, config_path, f"transfer_prompts.{i}")
        for i, p in enumerate(cfg.transfer_prompts)
    ]
    return cfg.model_copy(update=update)


def _resolve(path: str, config_path: Path | None, field: str) -> str:
    from selfimprove.sources import packaged_prompts

    if Path(path).is_absolute():
        return path
    candidates = [Path(path)]
    if config_path is not None:
        candidates.append(config_path.parent / path)
    found = next((p for p in candidates if p.exists()), None)
    if found is not None:
        return str(found.resolve())
    if packaged_prompts(path) is not None:
        return path
    tried = ", ".join(dict.fromkeys(str(p.resolve()) for p in candidates))  # once each
    raise ConfigError(config_path or "<config>", f"prompt file not found (tried {tried})",
                      field=field)


def load_run_config(run: RunDir) -> RunConfig:
    if not run.holds_run():
        raise SelfImproveError(f"{run.path} holds no run (no {RunDir.CONFIG}; `selfimprove run "
                               "--config ... --run-dir` starts one)")
    from selfimprove.yamlio import load_model, read_yaml

    data, node = read_yaml(run.config_path)
    cfg = load_model(run.config_path, RunConfig, data, node)
    # The run wrote every key (model_dump); in an edited file a key gone missing means it was cut
    # short or a block deleted, and the defaults would silently take its place on resume. (A file
    # as written is not checked: a later version's new keys are missing from it by right.)
    missing = _missing_keys(data, cfg.model_dump(mode="json")) if run.config_edited() else []
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5
                                          else "")
        raise RunDirError(
            f"{run.config_path}: lacks {shown}, which the run wrote when it began: the file was "
            "cut short or edited; restore the keys (a value may be changed, not removed)"
        )
    return cfg


def _missing_keys(written: Any, expected: Any, prefix: str = "") -> list[str]:
    """Dotted paths of ``expected``'s mapping keys absent from ``written``."""
    if not isinstance(written, dict) or not isinstance(expected, dict):
        return []
    missing: list[str] = []
    for key, value in expected.items():
        path = f"{prefix}{key}"
        if key not in written:
            missing.append(path)
        else:
            missing.extend(_missing_keys(written[key], value, f"{path}."))
    return missing


def load_run_prompts(cfg: RunConfig, constitution: Constitution | None = None
                     ) -> list[PromptRecord]:
    """The run's prompts; with ``constitution``, a prompt check reusing one of its check ids
    for another check is a located error."""
    from selfimprove.sources import load_dataset_prompts, load_prompt_records

    if cfg.prompts.path is not None:
        return load_prompt_records(cfg.prompts.path, cfg.prompts.field,
                                   constitution=constitution)
    assert cfg.prompts.dataset is not None
    pairs = load_dataset_prompts(cfg.prompts.dataset, cfg.prompts.split, cfg.prompts.field)
    return [PromptRecord(id=pid, prompt=text) for pid, text in pairs]


@dataclass
class Prepared:
    """What a run needs that can be checked before anything is written."""

    cfg: RunConfig
    constitution: Constitution
    train_prompts: list[PromptRecord]
    heldout_prompts: list[PromptRecord]
    transfer: dict[str, list[PromptRecord]] = field(default_factory=dict)


def prepare(cfg: RunConfig, where: Path | str = "<config>") -> Prepared:
    """Load and check the constitution, the prompts, their split and the model; write nothing.

    ``where`` names the config in errors.
    """
    from selfimprove.models import EMBEDDED_NAME, embedded_gguf, resolve_model

    try:
        constitution = load_constitution(cfg.critique.constitution)
    except ConfigError as exc:
        if exc.path != str(cfg.critique.constitution):
            raise  # an error inside the constitution's file names that file
        # no such constitution: the config's field is what to fix
        named = str(cfg.critique.constitution)
        detail = exc.detail if named in exc.detail else f"{named}: {exc.detail}"
        raise ConfigError(where, detail, field="critique.constitution") from None
    prompts = load_run_prompts(cfg, constitution)
    salt = seed_salt(cfg.seed)
    # held-out prompts are split by prompt text, whatever checks they carry
    heldout = [p for p in prompts if is_heldout(p.prompt, salt, cfg.heldout_fraction)]
    train = [p for p in prompts if not is_heldout(p.prompt, salt, cfg.heldout_fraction)]
    if not train or not heldout:
        raise ConfigError(
            where,
            f"{len(prompts)} prompts split into {len(train)} for training and "
            f"{len(heldout)} held out: both need at least one (add prompts or change "
            "heldout_fraction)",
            field="heldout_fraction",
        )
    if cfg.control.enabled and cfg.control.kind == "trim":
        from selfimprove.critique_loop.text import word_limit

        if word_limit(constitution) is None:
            raise ConfigError(where, f"the control arm 'trim' needs a hard max_words check, and "
                              f"constitution '{constitution.name}' has none (use best_of_checks "
                              "or auto)", field="control.kind")
    _check_devices(cfg, where)
    _check_lora_targets(cfg, where)
    for asked, have, key, what in (
        (cfg.batch_size, len(train), "batch_size", "training prompts"),
        (cfg.gate.num_prompts, len(heldout), "gate.num_prompts", "held-out prompts"),
    ):
        if asked > have:
            log.warning("%s: %s is %d, but there are only %d %s: each cycle uses %d",
                        where, key, asked, have, what, have)
    backend = cfg.critique.roles.policy.backend
    if backend is not None and backend.kind != "openai":
        # A missing local model or package fails here, not after the run directory exists.
        embedded_gguf() if backend.model == EMBEDDED_NAME else resolve_model(backend.model)
    transfer = load_transfer_sets(cfg.transfer_prompts, train, where, constitution=constitution)
    return Prepared(cfg, constitution, train, heldout, transfer)


def _summary(prepared: Prepared) -> dict[str, Any]:
    from selfimprove.improvement_cycle.control import control_kind

    cfg = prepared.cfg
    backend = cfg.critique.roles.policy.backend
    return {
        "constitution": cfg.critique.constitution,
        "model": backend.model if backend else None,
        "cycles": cfg.cycles,
        "prompts per cycle": min(cfg.batch_size, len(prepared.train_prompts)),
        "gate prompts": min(cfg.gate.num_prompts, len(prepared.heldout_prompts)),
        "training": "+".join(cfg.schedule.methods),
        "control arm": control_kind(cfg.control, prepared.constitution)
        if cfg.control.enabled else "off",
        "seed": cfg.seed,
    }


def build_context(
    prepared: Prepared,
    run: RunDir,
    *,
    roles: Roles | None = None,
    trainer: Callable[..., Any] | None = None,
    progress: Callable[[str, str], None] | None = None,
    arm: Arm = "loop",
) -> CycleContext:
    from selfimprove.registry import PolicyRegistry
    from selfimprove.store import PreferenceStore
    from selfimprove.wiring import critique_context, make_roles

    cfg = prepared.cfg
    store = PreferenceStore(run.path, heldout_fraction=cfg.heldout_fraction,
                            salt=seed_salt(cfg.seed))
    assert cfg.critique.roles.policy.backend is not None
    registry = PolicyRegistry(run.path, base_model=cfg.critique.roles.policy.backend.model)
    if roles is None:
        roles = make_roles(cfg.critique.roles)
    return CycleContext(
        cfg=cfg,
        run=run,
        store=store,
        registry=registry,
        critique=critique_context(cfg.critique, prepared.constitution, roles),
        train_prompts=prepared.train_prompts,
        heldout_prompts=prepared.heldout_prompts,
        trainer=trainer,
        progress=progress or (lambda stage, msg: None),
        arm=arm,
    )


async def run_cycles(ctx: CycleContext, *, resume: bool = False) -> dict[str, Any]:
    """Run (or continue) the cycle graph to the end; returns the final state."""
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    limit = {"recursion_limit": 16 * ctx.cfg.cycles + 16}
    if not ctx.cfg.durable:
        graph = build_cycle_graph()
        return await graph.ainvoke({"cycle": 0}, {**THREAD, **limit}, context=ctx)
    path = ctx.run.checkpoints_path
    async with AsyncSqliteSaver.from_conn_string(str(path)) as saver:
        graph = build_cycle_graph(checkpointer=saver)
        try:
            snapshot = await graph.aget_state(THREAD)
        except sqlite3.DatabaseError as exc:
            raise RunDirError(f"{path}: unreadable checkpoint database ({exc}); the run "
                              "cannot be continued from it") from None
        # Resume from the checkpoint whenever one exists; the state says whether it finished.
        started = bool(snapshot.values)
        if not started and ctx.run.load_cycles():
            # Without its checkpoints a run would start at cycle 1 again, over its own records.
            raise RunDirError(
                f"{path} is missing or empty, but {ctx.run.path} has finished cycles: the run "
                "cannot be continued; start a new one (its store and policies stay readable)"
            )
        if started and snapshot.values.get("done") and not snapshot.next:
            ctx.progress("run", "the run had already finished")
            return snapshot.values
        if started and not resume:
            raise SelfImproveError(f"{ctx.run.path} has checkpoints; use --resume")
        return await graph.ainvoke(
            None if started else {"cycle": 0},
            {**THREAD, **limit},
            context=ctx,
            durability="sync",
        )


def _check_devices(cfg: RunConfig, where: Path | str) -> None:
    """A device this machine lacks fails here, before the run directory exists (after it, the
    same command, fixed, would find the directory taken)."""
    for role in type(cfg.critique.roles).model_fields:
        backend = getattr(cfg.critique.roles, role).backend
        if backend is None or backend.device is None or backend.kind == "openai":
            continue
        import torch

        field = f"critique.roles.{role}.backend.device"
        try:
            device = torch.device(backend.device)
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(where, f"not a torch device: {exc}", field=field) from None
        accelerator = getattr(torch, device.type, None)
        available = getattr(accelerator, "is_available", None)
        if device.type != "cpu" and available is not None and not available():
            raise ConfigError(where, f"device '{backend.device}': this machine has no "
                              f"{device.type} device (torch {torch.__version__})", field=field)


def _check_lora_targets(cfg: RunConfig, where: Path | str) -> None:
    """LoRA target modules the policy model does not have fail here, not at the first training
    step after a cycle of sampling. Only names other than the defaults are looked up: that
    builds the model's skeleton (no weights) from its config."""
    from selfimprove.training.config import LoraSettings

    default = LoraSettings().target_modules
    asked = {
        method: lora.target_modules for method in cfg.schedule.methods
        if (lora := cfg.train_config(method).lora) is not None
        and isinstance(lora.target_modules, list) and lora.target_modules != default
    }
    backend = cfg.critique.roles.policy.backend
    if not asked or backend is None or backend.kind == "openai":
        return
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from selfimprove.models import resolve_model

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(
            AutoConfig.from_pretrained(resolve_model(backend.model)))
    names = {name.rsplit(".", 1)[-1] for name, _ in skeleton.named_modules()}
    linear = sorted({name.rsplit(".", 1)[-1] for name, module in skeleton.named_modules()
                     if isinstance(module, torch.nn.Linear)})
    for method, targets in asked.items():
        missing = [t for t in targets if t not in names]
        if missing:
            raise ConfigError(
                where, f"{backend.model} has no module named {', '.join(missing)} (its linear "
                f"layers: {', '.join(linear)})", field=f"{method}.lora.target_modules",
            )


def create_run(cfg: RunConfig, run_dir: Path | str, config_path: Path | None = None
               ) -> Prepared:
    """Validate ``cfg`` and write a new run directory (config, summary, v0) without running a
    cycle: ``selfimprove serve --config`` serves and records before the first cycle, and
    ``selfimprove run --resume`` starts the cycles later."""
    from selfimprove.registry import PolicyRegistry
    from selfimprove.store import PreferenceStore

    run_ = RunDir(run_dir)
    cfg = resolve_prompt_path(cfg, config_path)
    run_.refuse_existing()
    prepared = prepare(cfg, config_path or "<config>")
    run_.create(cfg, _summary(prepared))
    assert cfg.critique.roles.policy.backend is not None
    PolicyRegistry(run_.path, base_model=cfg.critique.roles.policy.backend.model)
    # The store's held-out split is fixed now, before anything (a recorder) opens it.
    PreferenceStore(run_.path, heldout_fraction=cfg.heldout_fraction, salt=seed_salt(cfg.seed))
    return prepared


def run(
    cfg: RunConfig | None,
    run_dir: Path | str,
    *,
    resume: bool = False,
    config_path: Path | None = None,
    roles: Roles | None = None,
    trainer: Callable[..., Any] | None = None,
    progress: Callable[[str, str], None] | None = None,
) -> dict[str, Any]:
    """Start a run in ``run_dir`` with ``cfg``, or continue the one there (``resume``).

    With ``cfg.control.enabled`` the control arm then runs in ``run_dir/control`` with the same
    prompts, seed, training and gate. Returns the loop arm's final state. SIGTERM stops it
    like Ctrl-C (see :func:`arun` for the same from inside an event loop).
    """

    async def main() -> dict[str, Any]:
        _cancel_on_sigterm()
        return await arun(cfg, run_dir, resume=resume, config_path=config_path, roles=roles,
                          trainer=trainer, progress=progress)

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None


async def arun(
    cfg: RunConfig | None,
    run_dir: Path | str,
    *,
    resume: bool = False,
    config_path: Path | None = None,
    roles: Roles | None = None,
    trainer: Callable[..., Any] | None = None,
    progress: Callable[[str, str], None] | None = None,
) -> dict[str, Any]:
    """:func:`run` in the running event loop (a server, a notebook)."""
    run_ = RunDir(run_dir)
    if resume:
        cfg = load_run_config(run_)
        prepared = prepare(cfg, run_.config_path)
    else:
        assert cfg is not None
        prepared = create_run(cfg, run_.path, config_path)
        cfg = prepared.cfg
    arms: list[tuple[Arm, RunDir]] = [("loop", run_)]
    if cfg.control.enabled:
        if not run_.control.holds_run():
            run_.control.create(cfg, _summary(prepared) | {"arm": "control"})
        arms.append(("control", run_.control))
    say = progress or (lambda stage, msg: None)

    async def main() -> dict[str, Any]:
        from selfimprove.wiring import make_roles

        shared = roles or make_roles(cfg.critique.roles)
        final: dict[str, Any] = {}
        try:
            for arm, where in arms:
                if len(arms) > 1:
                    say("run", f"{arm} arm in {where.path}")
                if where is not run_ and where.baseline() is None and run_.baseline():
                    # Same model, prompts and sampling: the loop's v0 evaluation holds here.
                    where.save_eval(run_.baseline())  # type: ignore[arg-type]
                ctx = build_context(prepared, where, roles=shared, trainer=trainer,
                                    progress=progress, arm=arm)
                where.set_status("running")
                state = await run_cycles(ctx, resume=resume or where is not run_)
                await evaluate_transfer(
                    where, prepared.transfer, shared.policy, prepared.constitution,
                    cfg.gate.sampling, reference=None if where is run_ else run_, progress=say,
                )
                where.set_status("finished")
                final = final or state
            if len(arms) > 1 or prepared.transfer:
                from selfimprove.report import write_report

                # the control's report with its transfer sets, then the loop's with everything
                for _, where in reversed(arms):
                    write_report(where)
        finally:
            if roles is None:
                await shared.aclose()
        return final

    try:
        return await main()
    except (KeyboardInterrupt, asyncio.CancelledError):
        _mark(arms, "interrupted", "stopped by a signal; continue with --resume")
        raise
    except BaseException as exc:
        _mark(arms, "failed", f"{type(exc).__name__}: {exc}")
        raise


def _cancel_on_sigterm() -> None:
    """SIGTERM cancels the run like Ctrl-C does: every ``finally`` and ``async with`` exit runs
    (checkpoints and backends close), instead of an exception raised at a random point."""
    task = asyncio.current_task()
    if task is None:
        return
    # not the main thread, or Windows: leave SIGTERM alone
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)


def _mark(arms: list[tuple[Arm, RunDir]], status: str, detail: str) -> None:
    for _, where in arms:
        current = where.status()
        if current is not None and current.status == "running":
            where.set_status(status, detail)
