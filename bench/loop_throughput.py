"""Throughput of the critique loop on the embedded model, as ratios measured in one run.

(a) raw padded batched ``generate`` over the prompts at batch 16 (tokens/s),
(b) the critique graph over the same prompts, many threads, micro-batching backend (tokens/s),
(c) a naive loop: the graph invoked once per prompt with batch-1 model calls, on the first
    ``--naive-prompts`` prompts, and (b') the batched graph on exactly those prompts.

Both backends are warmed the same way before anything is timed. Prints (b)/(a) (target >= 0.8)
and (b')/(c) (target >= 5; same prompts on both sides) and writes JSON.

    python bench/loop_throughput.py [--prompts 32] [--naive-prompts 8] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from selfimprove.backends.transformers import TransformersBackend
from selfimprove.config import RunConfig, load_config
from selfimprove.constitution import load_constitution
from selfimprove.critique_loop import CritiqueContext, critique_many
from selfimprove.roles import Roles
from selfimprove.sources import load_prompts
from selfimprove.types import Message, SamplingParams
from selfimprove.wiring import critique_context

# The concise job's settings (a short loop with every model role: critic, reviser, judge).
MAIN_JOB = load_config(Path(__file__).resolve().parent.parent / "examples/configs/concise-cpu.yaml",
                       RunConfig)
ROLES = MAIN_JOB.critique.roles
POLICY = ROLES.policy.sampling


def raw_generate(backend: TransformersBackend, prompts: list[str], batch: int) -> dict:
    """Padded batched ``model.generate`` straight on the model, no graph, no batcher."""
    import torch

    tok, model = backend.tokenizer, backend.model
    tokens = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(prompts), batch):
            texts = [
                tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                        add_generation_prompt=True)
                for p in prompts[i : i + batch]
            ]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**enc, max_new_tokens=POLICY.max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
            new = out[:, enc["input_ids"].shape[1] :]
            # count up to and including the first end-of-turn token, as the backend does
            for row in new.tolist():
                tokens += next((j + 1 for j, t in enumerate(row) if t == tok.eos_token_id),
                               len(row))
    seconds = time.perf_counter() - start
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def main_job_context(backend: TransformersBackend) -> CritiqueContext:
    """The main job's critique context (every loop and judge setting), every role on
    ``backend``."""
    roles = Roles(policy=backend, policy_sampling=POLICY, critic_sampling=ROLES.critic.sampling,
                  reviser_sampling=ROLES.reviser.sampling, sample_sampling=ROLES.sampler.sampling,
                  judge_sampling=ROLES.judge.sampling)
    constitution = load_constitution(MAIN_JOB.critique.constitution)
    return critique_context(MAIN_JOB.critique, constitution, roles)


def graph_run(backend: TransformersBackend, prompts: list[str], *, naive: bool) -> dict:
    ctx = main_job_context(backend)

    async def main():
        if not naive:
            return await critique_many(prompts, ctx, max_concurrency=64)
        out = []
        for p in prompts:  # one prompt at a time: every model call has batch size 1
            out += await critique_many([p], ctx, max_concurrency=1)
        return out

    start = time.perf_counter()
    results = asyncio.run(main())
    seconds = time.perf_counter() - start
    tokens = sum(r.generated_tokens for r in results)
    return {"prompts": len(prompts), "tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds}


def warmed(backend: TransformersBackend) -> TransformersBackend:
    """One tiny generate and one judge scoring pass: the first calls pay one-off costs."""
    conv = [[Message(role="user", content="hi")]]
    asyncio.run(backend.generate(conv, SamplingParams(max_new_tokens=2)))
    asyncio.run(backend.option_logprobs(conv, ["A", "B"]))
    return backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--naive-prompts", type=int, default=8,
                        help="prompts for the naive loop (it is slow; the rate is comparable)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/loop_throughput.json"))
    args = parser.parse_args()
    prompts = [p for _, p in load_prompts("general")][: args.prompts]

    backend = warmed(TransformersBackend(max_batch_size=32, max_wait_ms=30))
    a = raw_generate(backend, prompts, batch=16)
    b = graph_run(backend, prompts, naive=False)
    batched_stats = vars(backend.stats).copy()
    same = prompts[: args.naive_prompts]
    b_same = graph_run(backend, same, naive=False)
    naive_backend = warmed(TransformersBackend(max_batch_size=1, max_wait_ms=0))
    c = graph_run(naive_backend, same, naive=True)
    result = {
        "raw_batch16": a,
        "graph_batched": b | {"backend": batched_stats},
        "graph_batched_same_prompts": b_same,
        "graph_naive": c,
        "ratio_graph_vs_raw": b["tokens_per_s"] / a["tokens_per_s"],
        "ratio_graph_vs_naive": b_same["tokens_per_s"] / c["tokens_per_s"],
        "targets": {"ratio_graph_vs_raw": 0.8, "ratio_graph_vs_naive": 5.0},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"(a) raw batched generate, batch 16: {a['tokens_per_s']:.1f} tok/s")
    print(f"(b) critique graph, {b['prompts']} prompts: {b['tokens_per_s']:.1f} tok/s "
          f"({batched_stats['generate_calls']} generate calls, "
          f"up to {batched_stats['max_rows_in_call']} rows each)")
    print(f"(b') critique graph, the same {b_same['prompts']} prompts as (c): "
          f"{b_same['tokens_per_s']:.1f} tok/s")
    print(f"(c) naive loop, {c['prompts']} prompts, batch 1: {c['tokens_per_s']:.1f} tok/s")
    print(f"(b)/(a) = {result['ratio_graph_vs_raw']:.2f}   (target >= 0.8)")
    print(f"(b')/(c) = {result['ratio_graph_vs_naive']:.2f}   (target >= 5)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
