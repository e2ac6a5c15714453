"""float32 against bfloat16 for the transformers backend on the embedded model, in one run.

For each dtype, on the same prompts (the shipped ``general`` set):

(a) generation: the backend's batched ``generate``, greedy, 128 new tokens (tokens/s);
(b) the judge's option-token log-probabilities ("A"/"B" after a pairwise judge prompt):
    how often bfloat16 picks the option float32 picks, and the mean absolute difference;
(c) the retention check's sequence NLL: the relative difference of the mean.

Prints bfloat16/float32 ratios and writes JSON, with the CPU's bfloat16 support: whether
bfloat16 pays depends on it (AVX-512 BF16 or AMX), which is why ``dtype: auto`` is bfloat16 only
on CPUs that have it (see ``selfimprove.models.load_causal_lm``).

    python bench/dtype.py [--prompts 32] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

from selfimprove.backends.transformers import TransformersBackend
from selfimprove.sources import load_prompts
from selfimprove.types import Message, SamplingParams

ROOT = Path(__file__).resolve().parent.parent
JUDGE = ("Which answer is better? Reply with A or B.\n\nQuestion: {q}\n\nA: {a}\n\nB: {b}")


async def measure(dtype: str, prompts: list[str]) -> dict:
    backend = TransformersBackend(dtype=dtype, max_batch_size=16)
    try:
        convs = [[Message(role="user", content=p)] for p in prompts]
        params = SamplingParams(max_new_tokens=128, temperature=0.0)
        await backend.generate(convs[:2], params.model_copy(update={"max_new_tokens": 8}))  # warm
        start = time.perf_counter()
        outs = await backend.generate(convs, params)
        seconds = time.perf_counter() - start
        answers = [o[0].text for o in outs]
        tokens = sum(o[0].num_tokens for o in outs)
        # The judge and the retention check score the same texts under both dtypes.
        reference = [a or "I do not know." for a in REFERENCE_ANSWERS or answers]
        judge_convs = [[Message(role="user", content=JUDGE.format(q=p, a=reference[i],
                                                                   b=reference[i - 1]))]
                       for i, p in enumerate(prompts)]
        start = time.perf_counter()
        logprobs = await backend.option_logprobs(judge_convs, ["A", "B"])
        judge_seconds = time.perf_counter() - start
        nll = await backend.sequence_nll([f"{p}\n{a}" for p, a in zip(prompts, reference,
                                                                        strict=True)])
        return {"dtype": dtype, "tokens": tokens, "seconds": round(seconds, 2),
                "tokens_per_s": round(tokens / seconds, 1),
                "judge_seconds": round(judge_seconds, 2),
                "answers": answers, "logprobs": logprobs, "nll": nll}
    finally:
        await backend.aclose()


REFERENCE_ANSWERS: list[str] = []  # float32's answers, once measured


def mean_words(texts: list[str]) -> float:
    return round(statistics.mean(len(t.split()) for t in texts), 1)


def compare(fp32: dict, bf16: dict) -> dict:
    picks = [(max(a, key=a.get), max(b, key=b.get))
             for a, b in zip(fp32["logprobs"], bf16["logprobs"], strict=True)]
    diffs = [abs(a[k] - b[k]) for a, b in zip(fp32["logprobs"], bf16["logprobs"], strict=True)
             for k in a]
    same_text = sum(a == b for a, b in zip(fp32["answers"], bf16["answers"], strict=True))
    nll32, nll16 = statistics.mean(fp32["nll"]), statistics.mean(bf16["nll"])
    return {
        "generation_speedup": round(bf16["tokens_per_s"] / fp32["tokens_per_s"], 2),
        "judge_speedup": round(fp32["judge_seconds"] / bf16["judge_seconds"], 2),
        "judge_same_pick": round(sum(a == b for a, b in picks) / len(picks), 3),
        "judge_mean_abs_logprob_diff": round(statistics.mean(diffs), 4),
        "nll_relative_diff": round((nll16 - nll32) / nll32, 4),
        "same_greedy_answer": round(same_text / len(fp32["answers"]), 3),
        "mean_words": {run["dtype"]: mean_words(run["answers"]) for run in (fp32, bf16)},
    }


async def main_async(n: int) -> dict:
    prompts = [p for _, p in load_prompts(str(ROOT / "selfimprove/data/prompts/general.jsonl"))][:n]
    fp32 = await measure("float32", prompts)
    REFERENCE_ANSWERS.extend(fp32["answers"])
    bf16 = await measure("bfloat16", prompts)
    summary = compare(fp32, bf16)
    for run in (fp32, bf16):
        for key in ("answers", "logprobs", "nll"):
            run.pop(key)
    return {"prompts": n, "cpu_bf16_flags": cpu_bf16_flags(), "float32": fp32, "bfloat16": bf16,
            **summary}


def cpu_bf16_flags() -> list[str]:
    """The CPU's native bfloat16 instructions, as /proc/cpuinfo names them (Linux)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return []
    return sorted({f for f in flags if f in ("avx512_bf16", "amx_bf16")})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/dtype.json")
    args = parser.parse_args()
    result = asyncio.run(main_async(args.prompts))
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
