"""train: fit the next candidate (DPO and/or SFT, LoRA) on the store; never twice per cycle."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from langgraph.runtime import Runtime

from selfimprove.config import LaunchConfig
from selfimprove.errors import TrainingError
from selfimprove.improvement_cycle.state import CycleContext, CycleState
from selfimprove.improvement_cycle.timing import timed
from selfimprove.registry import DataUsed
from selfimprove.types import PolicyRef


def _train_one(ctx: CycleContext, cycle: int, method: str, parent: PolicyRef) -> tuple[str, dict]:
    if ctx.cfg.launch is not None:
        return _train_launched(ctx, cycle, method, parent)
    from selfimprove.training.policy import train_policy

    dataset, shards = ctx.store.training_data(method)
    used = [DataUsed(name=s.name, rows=s.rows, kind=s.kind) for s in shards]
    ref, result = train_policy(
        ctx.registry, dataset, ctx.cfg.train_config(method), data=used, parent=parent.version,
        progress=False, cycle=cycle, trainer=ctx.trainer,
    )
    return ref.version, dict(result.metrics)


def _train_launched(ctx: CycleContext, cycle: int, method: str,
                    parent: PolicyRef) -> tuple[str, dict]:
    """The training step in processes of its own (``accelerate launch -m
    selfimprove.training``): the main process commits the candidate with this cycle's number,
    which is how this one finds it (and how a resumed run finds it without training twice)."""
    launch = ctx.cfg.launch
    assert launch is not None
    with tempfile.TemporaryDirectory(prefix="selfimprove-launch-") as tmp:
        train_yaml = Path(tmp) / f"{method}.yaml"
        train_yaml.write_text(yaml.safe_dump(ctx.cfg.train_config(method).model_dump(mode="json")))
        launcher, env = launch_command(launch)
        cmd = launcher + [
            "-m", "selfimprove.training", "--run-dir", str(ctx.run.path), "--method", method,
            "--config", str(train_yaml), "--parent", parent.version, "--cycle", str(cycle),
            "--no-promote", "--no-progress",
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=launch.timeout_s,
                                  check=False, env=env)
        except subprocess.TimeoutExpired:
            raise TrainingError(f"{method.upper()} under accelerate launch ran past "
                                f"launch.timeout_s ({launch.timeout_s:g} s)") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-3000:]
        raise TrainingError(f"{method.upper()} under accelerate launch failed "
                            f"(exit {proc.returncode}):\n{tail}")
    version = ctx.registry.trained_in(cycle, method)
    if version is None:
        raise TrainingError(f"{method.upper()} under accelerate launch exited 0 but committed "
                            f"no version for cycle {cycle}")
    return version, dict(ctx.registry.record(version).metrics)


def launch_command(launch: LaunchConfig) -> tuple[list[str], dict[str, str]]:
    """``accelerate launch`` with its flags for this Python, and the environment to run it in.

    Several processes start through accelerate's torchrun launcher (``--multi_gpu``, its name
    for it); on CPUs ``ACCELERATE_USE_CPU`` makes them join over gloo, since accelerate's own
    ``--cpu`` launcher starts one process unless MPI is set up.
    """
    cmd = [sys.executable, "-m", "accelerate.commands.launch",
           "--num_processes", str(launch.num_processes)]
    env = dict(os.environ)
    if launch.config_file is not None:
        cmd += ["--config_file", str(launch.config_file)]
    if launch.num_processes > 1 and launch.config_file is None:
        cmd.append("--multi_gpu")
    if launch.cpu:
        env["ACCELERATE_USE_CPU"] = "true"
        if launch.num_processes == 1:
            cmd.append("--cpu")
    return cmd + list(launch.extra_args), env


async def train(state: CycleState, runtime: Runtime[CycleContext]) -> CycleState:
    ctx = runtime.context
    c = state["cycle"] + 1
    seconds = dict(state.get("stage_seconds", {}))
    parent = ctx.registry.current() if ctx.cfg.schedule.train_from == "current" \
        else ctx.registry.get("v0")
    metrics: dict = {}
    with timed(seconds, "training"):
        for method in ctx.cfg.schedule.methods:
            rows = len(ctx.store.training_data(method)[0])
            if rows == 0:
                ctx.progress("train", f"no {method.upper()} rows yet: skipped")
                continue
            version = ctx.registry.trained_in(c, method)
            if version is None:
                ctx.progress("train", f"{method.upper()} on {rows} rows from {parent.version}")
                version, m = await asyncio.to_thread(_train_one, ctx, c, method, parent)
            else:
                m = dict(ctx.registry.record(version).metrics)
                ctx.progress("train", f"{version} was already trained in this cycle: reused")
            metrics |= {f"{method}/{k}": v for k, v in m.items()}
            metrics[f"{method}/version"] = version
            parent = ctx.registry.get(version)
    if parent.version in (ctx.registry.current_version(), "v0"):
        return {"candidate": None, "stage_seconds": seconds, "decision": "skipped",
                "reasons": ["no training data yet"]}
    steps = metrics.get("dpo/steps", metrics.get("sft/steps"))
    ctx.progress("train", f"candidate {parent.version} ({steps} training steps)")
    return {"candidate": parent.version, "train_metrics": metrics, "stage_seconds": seconds,
            "pairs_since_train": 0}


def route_after_train(state: CycleState) -> str:
    return "gate" if state.get("candidate") else "record"
