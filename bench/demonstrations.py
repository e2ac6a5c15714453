"""Do demonstrations help the policy fix broken instructions? Measured in one run.

On the first ``--prompts`` prompts of the ``instructions`` set the policy answers greedily,
plain and after the ``instructions`` constitution's examples (as earlier turns). For every
plain answer that fails (checks, token cap or repetition), four samples each way:

- ``resample4``: the bare question again;
- ``examples4``: the question after the demonstrations (what ``critique.sample_with_examples``
  does to the loop's extra samples);
- ``examples_rules4``: the same, with the broken rules appended to the question.

Prints how many failing answers each fixed (at least one sample passes) and how many samples
passed, and writes JSON.

    python bench/demonstrations.py [--prompts 32] [--out bench/results/demonstrations.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from critique_sources import CONFIG, fixed

from selfimprove.checks import run_checks
from selfimprove.config import RunConfig, load_config
from selfimprove.critique_loop.generate import with_examples
from selfimprove.critique_loop.text import failed_checks_text
from selfimprove.sources import load_prompt_records
from selfimprove.types import Message
from selfimprove.wiring import make_context


async def measure(n_prompts: int) -> dict:
    cfg = load_config(CONFIG, RunConfig)
    ctx = make_context(cfg.critique.model_copy(update={"num_samples": 0}))
    examples = ctx.constitution.examples
    records = load_prompt_records("instructions")[:n_prompts]
    policy = ctx.roles.policy

    def bare(text: str) -> list[Message]:
        return [Message(role="user", content=text)]

    firsts = await policy.generate([bare(r.prompt) for r in records], ctx.roles.policy_sampling)
    shown = await policy.generate([with_examples(bare(r.prompt), examples) for r in records],
                                  ctx.roles.policy_sampling)
    result: dict = {
        "prompts": len(records),
        "greedy_passing": sum(fixed(ctx, r, f) for r, (f,) in zip(records, firsts, strict=True)),
        "greedy_passing_after_examples": sum(
            fixed(ctx, r, f) for r, (f,) in zip(records, shown, strict=True)),
    }
    failing = [(r, f) for r, (f,) in zip(records, firsts, strict=True) if not fixed(ctx, r, f)]
    rules = {r.id: failed_checks_text(run_checks([*ctx.constitution.checks, *r.checks], f.text))
             for r, f in failing}
    four = ctx.roles.sample_sampling.model_copy(update={"n": 4, "seed": 1})
    ways = {
        "resample4": [bare(r.prompt) for r, _ in failing],
        "examples4": [with_examples(bare(r.prompt), examples) for r, _ in failing],
        "examples_rules4": [
            with_examples(bare(f"{r.prompt}\n{rules[r.id]}Answer again and follow every "
                               "instruction."), examples)
            for r, _ in failing
        ],
    }
    result |= {"failing": len(failing), "ways": {}}
    for name, convs in ways.items():
        start = time.perf_counter()
        outs = await policy.generate(convs, four)
        pairs = list(zip(failing, outs, strict=True))
        result["ways"][name] = {
            "fixed": sum(any(fixed(ctx, r, o) for o in row) for (r, _), row in pairs),
            "samples_passing": sum(fixed(ctx, r, o) for (r, _), row in pairs for o in row),
            "seconds": round(time.perf_counter() - start, 1),
        }
    await ctx.roles.aclose()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("bench/results/demonstrations.json"))
    args = parser.parse_args()
    result = asyncio.run(measure(args.prompts))
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
