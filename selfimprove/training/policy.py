"""Train a new policy version of a run: store data in, registry version out.

In-process (CPU, one GPU)::

    python -m selfimprove.training --run-dir runs/demo --method dpo [--config train.yaml]

On several GPUs, the same module under ``accelerate launch`` (see ``examples/accelerate/``)::

    accelerate launch --config_file examples/accelerate/ddp.yaml \\
        -m selfimprove.training --run-dir runs/demo --method dpo --config train.yaml

Every process trains; only the main process opens the registry, creates the staging
directory (its path is broadcast to the others) and commits the version.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfimprove.registry import DataUsed, PolicyRegistry
from selfimprove.training.common import TrainResult
from selfimprove.training.config import Method, TrainConfig, load_train_config
from selfimprove.types import PolicyRef

if TYPE_CHECKING:
    import datasets

__all__ = [
    "add_train_arguments",
    "commit",
    "describe",
    "load_store_data",
    "main",
    "run_training",
    "train",
    "train_policy",
]


def train(
    method: Method,
    base_model: str,
    parent: PolicyRef,
    dataset: datasets.Dataset,
    cfg: TrainConfig,
    output_dir: Path,
    progress: bool = True,
) -> TrainResult:
    """Dispatch to :func:`train_dpo` or :func:`train_sft`."""
    if method == "dpo":
        from selfimprove.training.dpo import train_dpo

        return train_dpo(base_model, parent, dataset, cfg, output_dir, progress)
    from selfimprove.training.sft import train_sft

    return train_sft(base_model, parent, dataset, cfg, output_dir, progress)


def train_policy(
    registry: PolicyRegistry,
    dataset: datasets.Dataset,
    cfg: TrainConfig,
    *,
    data: Iterable[DataUsed | Mapping[str, Any]] = (),
    parent: str | None = None,
    promote: bool = False,
    progress: bool = True,
    cycle: int | None = None,
    trainer: Callable[..., TrainResult] | None = None,
) -> tuple[PolicyRef, TrainResult]:
    """Train ``cfg.method`` from ``parent`` (default: current) and commit the next version.

    A run that fails leaves no version behind (its staging directory is removed); the new
    version is current only when ``promote`` is true. ``cycle`` records which improvement
    cycle trained the version; ``trainer`` replaces :func:`train` (same arguments), e.g. in
    tests.
    """
    parent_ref = registry.parent_for_training(parent)
    cfg = cfg.for_rows(len(dataset))  # the version's record keeps the steps it trained
    staging = registry.staging_dir()
    result = _train_staged(registry, staging, parent_ref, dataset, cfg, progress, trainer)
    ref = commit(registry, staging, parent_ref, cfg, data, result, promote=promote, cycle=cycle)
    return ref, result.model_copy(update={"adapter_dir": Path(ref.adapter_path or ref.base_model)})


def _train_staged(
    registry: PolicyRegistry | None,
    staging: Path,
    parent: PolicyRef,
    dataset: datasets.Dataset,
    cfg: TrainConfig,
    progress: bool,
    trainer: Callable[..., TrainResult] | None = None,
) -> TrainResult:
    """Train into ``staging``; a failure removes it (on the process that owns the registry)."""
    try:
        return (trainer or train)(
            cfg.method, parent.base_model, parent, dataset, cfg, staging, progress
        )
    except BaseException:
        if registry is not None:
            registry.discard(staging)
        raise


def commit(
    registry: PolicyRegistry,
    staging: Path,
    parent: PolicyRef,
    cfg: TrainConfig,
    data: Iterable[DataUsed | Mapping[str, Any]],
    result: TrainResult,
    *,
    promote: bool,
    cycle: int | None = None,
) -> PolicyRef:
    """Commit a trained staging directory as the next version (and promote it if asked)."""
    ref = registry.commit(
        staging,
        parent=parent.version,
        method=cfg.method,
        data=data,
        train_config=cfg.model_dump(mode="json"),
        metrics=result.metrics,
        cycle=cycle,
    )
    return registry.promote(ref.version) if promote else ref


def load_store_data(
    run_dir: Path, method: Method, exclude_strategies: Sequence[str] = ()
) -> tuple[datasets.Dataset, list[DataUsed]]:
    """The run's training rows for ``method`` and the shards they come from, without the rows
    of ``exclude_strategies`` (an ablation: what do the bare pairs, or the repairs, teach?)."""
    from selfimprove.errors import StoreError
    from selfimprove.store import PreferenceStore

    store = PreferenceStore(run_dir, readonly=True)
    dataset, shards = store.training_data(method)
    used = [DataUsed(name=s.name, rows=s.rows, kind=s.kind) for s in shards]
    if exclude_strategies:
        excluded = list(dict.fromkeys(exclude_strategies))
        strategies = list(dataset["strategy"]) if len(dataset) else []
        missing = [s for s in excluded if s not in strategies]
        if missing:
            raise StoreError(f"{store.dir}: no {method.upper()} rows of strategy "
                             f"{', '.join(map(repr, missing))} to leave out (the rows' "
                             f"strategies: {', '.join(sorted(set(strategies))) or 'none'})")
        keep = [i for i, s in enumerate(strategies) if s not in excluded]
        # the rows come shard after shard, in the shards' order
        bounds, start = [], 0
        for s in shards:
            bounds.append((s, start, start + s.rows))
            start += s.rows
        without = f" without {', '.join(excluded)}"
        used = [DataUsed(name=s.name + without, rows=sum(lo <= i < hi for i in keep), kind=s.kind)
                for s, lo, hi in bounds]
        dataset = dataset.select(keep)
    if len(dataset) == 0:
        left = " once those strategies are left out" if exclude_strategies else ""
        raise StoreError(f"{store.dir}: no rows to train {method.upper()} on{left}")
    return dataset, used


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The training flags, shared by ``selfimprove train`` and ``python -m selfimprove.training``
    (each has a TrainConfig key or says what it selects)."""
    parser.add_argument("--config", type=Path, help="YAML with TrainConfig fields")
    parser.add_argument("--max-steps", type=int, help="optimizer steps (key: max_steps)")
    parser.add_argument("--learning-rate", type=float, help="learning rate (key: learning_rate)")
    parser.add_argument(
        "--parent", metavar="VERSION", help="start from this version (default: current)"
    )
    parser.add_argument(
        "--promote",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="make the new version current (default: yes)",
    )
    parser.add_argument(
        "--exclude-strategy", action="append", default=[], metavar="STRATEGY",
        help="leave out the store's rows of this strategy (e.g. bare_phrases); repeatable",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m selfimprove.training",
        description="Train the next policy version of a run from its preference store.",
    )
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--method", choices=("dpo", "sft"), required=True)
    add_train_arguments(parser)
    parser.add_argument("--cycle", type=int, help="the improvement cycle this step belongs to "
                        "(recorded with the version; `selfimprove run` passes it)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m selfimprove.training`` and ``accelerate launch -m``."""
    from selfimprove.errors import SelfImproveError

    try:
        return run_training(_parser().parse_args(argv))
    except SelfImproveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run_training(args: argparse.Namespace) -> int:
    """Train ``args.method`` on ``args.run_dir``'s store, in one process or under accelerate.

    Every process trains; only the main process opens the registry, creates the staging
    directory (its path is broadcast to the others) and commits the version.
    """
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list, parse_flag_from_env

    from selfimprove.errors import SelfImproveError

    # Config and data errors surface before a model is loaded, the same on every process.
    cfg = load_train_config(
        args.config,
        args.method,
        {"max_steps": args.max_steps, "learning_rate": args.learning_rate},
    )
    dataset, used = load_store_data(args.run_dir, args.method,
                                    getattr(args, "exclude_strategy", None) or ())
    cfg = cfg.for_rows(len(dataset))
    # Initialised here (the trainer reuses it): the staging path must be shared before training.
    # ``accelerate launch --cpu`` (or ACCELERATE_USE_CPU=1 under torchrun) selects gloo on CPUs.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    registry: PolicyRegistry | None = None
    shared: list[Any] = [None, None, None]  # staging dir, parent, error
    if state.is_main_process:
        try:
            registry = PolicyRegistry(args.run_dir)
            parent = registry.parent_for_training(args.parent)
            shared = [str(registry.staging_dir()), parent.model_dump(), None]
        except SelfImproveError as exc:
            shared = [None, None, str(exc)]
    if state.num_processes > 1:
        broadcast_object_list(shared, from_process=0)  # the others wait here for the main one
    if shared[2] is not None:
        raise SelfImproveError(shared[2])
    staging, parent = Path(shared[0]), PolicyRef.model_validate(shared[1])
    result = _train_staged(registry, staging, parent, dataset, cfg, not args.no_progress)
    result.metrics["processes"] = state.num_processes
    if registry is not None:
        ref = commit(registry, staging, parent, cfg, used, result, promote=args.promote,
                     cycle=getattr(args, "cycle", None))  # `selfimprove train` has no --cycle
        print(describe(ref.version, args.promote, args.method, parent.version, result))
    return 0


def describe(version: str, promoted: bool, method: str, parent: str, result: TrainResult) -> str:
    """One line saying what was trained: the version, its parent and the key metrics."""
    metrics = ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items())
    status = "current" if promoted else "candidate"
    return f"{version} ({status}): {method} from {parent}; {metrics}"
