"""Which source of a revision fixes a broken instruction most often, measured in one run.

On the first ``--prompts`` prompts of the ``instructions`` set, the policy answers once (the
instructions job's sampling); for every answer that fails its checks (or ends at the token cap
or repeats itself), four ways of getting a fixed answer, two tries each:

- ``resample``: ask the same question again (rejection sampling);
- ``revise_checks``: the revise prompt with the failed rules as the critique (``critic: checks``);
- ``reanswer``: the question again with the broken rules appended;
- ``critic_model``: the critique loop as configured with ``critic: model`` (the critic writes
  the critique, then the reviser revises).

Prints how many failing answers each fixed (an answer that ends, does not repeat itself and
passes every check) and its seconds, and writes JSON.

    python bench/critique_sources.py [--prompts 24] [--out bench/results/critique_sources.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from selfimprove.checks import passes, run_checks
from selfimprove.config import RunConfig, load_config
from selfimprove.critique_loop import critique_many
from selfimprove.critique_loop.text import failed_checks_text
from selfimprove.degeneration import repeats_itself
from selfimprove.prompts import user
from selfimprove.sources import PromptRecord, load_prompt_records
from selfimprove.types import Completion, Message
from selfimprove.wiring import make_context

CONFIG = Path(__file__).resolve().parent.parent / "examples/configs/instructions-cpu.yaml"


def fixed(ctx, record: PromptRecord, out: Completion) -> bool:
    checks = [*ctx.constitution.checks, *record.checks]
    return (out.finish_reason == "stop" and bool(out.text.strip())
            and not repeats_itself(out.text) and passes(run_checks(checks, out.text)))


async def measure(n_prompts: int) -> dict:
    cfg = load_config(CONFIG, RunConfig)
    ctx = make_context(cfg.critique.model_copy(update={"critic": "model", "num_samples": 0}))
    records = load_prompt_records("instructions")[:n_prompts]
    policy = ctx.roles.policy
    firsts = await policy.generate([[Message(role="user", content=r.prompt)] for r in records],
                                   ctx.roles.policy_sampling)
    failing = [(r, f) for r, (f,) in zip(records, firsts, strict=True) if not fixed(ctx, r, f)]
    rules = {r.id: failed_checks_text(run_checks([*ctx.constitution.checks, *r.checks], f.text))
             for r, f in failing}
    two = ctx.roles.sample_sampling.model_copy(update={"n": 2, "seed": 1})
    ways = {
        "resample": [[Message(role="user", content=r.prompt)] for r, _ in failing],
        "revise_checks": [
            user("revise", prompt=r.prompt, response=f.text,
                 critique="The response breaks the rules listed below.",
                 failed_checks=rules[r.id],
                 requests=ctx.constitution.principles[0].revision)
            for r, f in failing
        ],
        "reanswer": [
            [Message(role="user", content=f"{r.prompt}\n{rules[r.id]}"
                     "Answer again and follow every instruction.")]
            for r, _ in failing
        ],
    }
    result: dict = {"prompts": len(records), "failing": len(failing), "ways": {}}
    for name, convs in ways.items():
        start = time.perf_counter()
        outs = await policy.generate(convs, two)
        n_fixed = sum(any(fixed(ctx, r, o) for o in row)
                      for (r, _), row in zip(failing, outs, strict=True))
        result["ways"][name] = {"fixed": n_fixed, "seconds": time.perf_counter() - start}
    start = time.perf_counter()
    loop = await critique_many([r for r, _ in failing], ctx)
    n_fixed = sum(x.final_passes and not x.final_truncated and not repeats_itself(x.final_response)
                  for x in loop)
    result["ways"]["critic_model"] = {"fixed": n_fixed, "seconds": time.perf_counter() - start}
    await ctx.roles.aclose()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--out", type=Path, default=Path("bench/results/critique_sources.json"))
    args = parser.parse_args()
    result = asyncio.run(measure(args.prompts))
    print(f"{result['failing']} of {result['prompts']} first answers fail; fixed, two tries each:")
    for name, r in result["ways"].items():
        print(f"  {name:14s} {r['fixed']:3d}/{result['failing']}  ({r['seconds']:.0f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
