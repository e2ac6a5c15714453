"""One improvement cycle on the embedded model: wall time per stage and checkpointer overhead.

Runs one cycle with durable checkpointing (SQLite, synchronous) and times every checkpoint
write inside that same run, so the overhead ratio wall / (wall - checkpoint time) is not
confounded by warm-up or by the machine's noise between two runs (target <= 1.05). Prints the
time and share of each stage (generation, judging, training, evaluation) and writes JSON.

    python bench/cycle.py [--prompts 16] [--out bench/results/cycle.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from selfimprove.backends.transformers import TransformersBackend
from selfimprove.config import RunConfig, load_config
from selfimprove.roles import Roles
from selfimprove.runner import run

CONFIG = Path(__file__).resolve().parent.parent / "examples" / "configs" / "concise-cpu.yaml"


def time_checkpoints() -> dict[str, float]:
    """Accumulate the seconds spent in the SQLite checkpointer's write methods."""
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    spent = {"seconds": 0.0, "writes": 0}
    for name in ("aput", "aput_writes"):
        original = getattr(AsyncSqliteSaver, name)

        async def timed(self, *args, _original=original, **kwargs):
            start = time.perf_counter()
            try:
                return await _original(self, *args, **kwargs)
            finally:
                spent["seconds"] += time.perf_counter() - start
                spent["writes"] += 1

        setattr(AsyncSqliteSaver, name, timed)
    return spent


def config_roles(cfg: RunConfig, backend: TransformersBackend) -> Roles:
    """Every role on ``backend`` (loaded once), with the config's sampling for each."""
    r = cfg.critique.roles
    return Roles(
        policy=backend,
        policy_sampling=r.policy.sampling,
        critic_sampling=r.critic.sampling,
        reviser_sampling=r.reviser.sampling,
        sample_sampling=r.sampler.sampling,
        judge_sampling=r.judge.sampling,
    )


def one_cycle(cfg: RunConfig, backend: TransformersBackend, durable: bool) -> dict:
    roles = config_roles(cfg, backend)
    run_dir = Path(tempfile.mkdtemp(prefix="bench-cycle-"))
    start = time.perf_counter()
    state = run(cfg.model_copy(update={"durable": durable}), run_dir / "run", roles=roles)
    wall = time.perf_counter() - start
    (record,) = state["records"]
    return {"wall_s": wall, "stages": record["stage_seconds"], "decision": record["decision"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16, help="prompts in the cycle")
    parser.add_argument("--out", type=Path, default=Path("bench/results/cycle.json"))
    args = parser.parse_args()
    base = load_config(CONFIG, RunConfig)
    gate = base.gate.model_copy(update={"num_prompts": args.prompts})
    # one cycle of the loop arm only: the control arm would run a second cycle after it
    control = base.control.model_copy(update={"enabled": False})
    cfg = base.model_copy(update={"cycles": 1, "batch_size": args.prompts, "gate": gate,
                                  "control": control})
    backend = TransformersBackend(max_batch_size=32, max_wait_ms=30)
    spent = time_checkpoints()
    durable = one_cycle(cfg, backend, durable=True)
    stages = durable["stages"]
    total = sum(stages.values())
    wall = durable["wall_s"]
    result = {
        "prompts": args.prompts,
        "durable": durable,
        "checkpoint_writes": spent["writes"],
        "checkpoint_seconds": spent["seconds"],
        "stage_share": {k: v / total for k, v in stages.items()},
        "checkpointer_overhead_ratio": wall / (wall - spent["seconds"]),
        "target_overhead_ratio": 1.05,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for k, v in result["stage_share"].items():
        print(f"{k:>11}: {stages[k]:7.1f} s  {v:6.1%}")
    print(f"wall {wall:.1f} s, of which {spent['seconds']:.2f} s in {spent['writes']} "
          "synchronous checkpoint writes")
    print(f"checkpointer overhead ratio = {result['checkpointer_overhead_ratio']:.3f} "
          "(target <= 1.05)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
