"""One improvement cycle on the embedded model: wall time per stage and checkpointer overhead.

Runs the same one-cycle configuration twice in one process: with durable checkpointing
(SQLite, synchronous) and without a checkpointer. Prints the time and share of each stage
(generation, judging, training, evaluation) and the overhead ratio (target <= 1.05), and
writes JSON.

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
from selfimprove.cycle import run
from selfimprove.graph.state import Roles

CONFIG = Path(__file__).resolve().parent.parent / "examples" / "configs" / "concise-cpu.yaml"


def one_cycle(cfg: RunConfig, backend: TransformersBackend, durable: bool) -> dict:
    roles = Roles(
        policy=backend,
        policy_sampling=cfg.critique.roles.policy.sampling,
        critic_sampling=cfg.critique.roles.critic.sampling,
        reviser_sampling=cfg.critique.roles.reviser.sampling,
    )
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
    cfg = base.model_copy(update={"cycles": 1, "batch_size": args.prompts, "gate": gate})
    backend = TransformersBackend(max_batch_size=32, max_wait_ms=30)
    durable = one_cycle(cfg, backend, durable=True)
    plain = one_cycle(cfg, backend, durable=False)
    stages = durable["stages"]
    total = sum(stages.values())
    result = {
        "prompts": args.prompts,
        "durable": durable,
        "no_checkpointer": plain,
        "stage_share": {k: v / total for k, v in stages.items()},
        "checkpointer_overhead_ratio": durable["wall_s"] / plain["wall_s"],
        "target_overhead_ratio": 1.05,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for k, v in result["stage_share"].items():
        print(f"{k:>11}: {stages[k]:7.1f} s  {v:6.1%}")
    print(f"wall with durable checkpoints {durable['wall_s']:.1f} s, "
          f"without {plain['wall_s']:.1f} s")
    print(f"checkpointer overhead ratio = {result['checkpointer_overhead_ratio']:.3f} "
          "(target <= 1.05)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
