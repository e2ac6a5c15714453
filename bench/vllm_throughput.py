"""vLLM against the transformers backend on the embedded model, as ratios measured in one run.

On the same prompts, with the main job's critique settings:

(a) raw vLLM generation: one ``LLM.chat`` call over all prompts, greedy (tokens/s);
(b) the critique graph on the vLLM backend (LoRA enabled, prefix caching on);
(c) the critique graph on the transformers backend at its best measured dtype (fp32 on a CPU
    without AVX-512 BF16, see bench/dtype.py);
(d) a trained version served: the same raw generation through a LoRA adapter of the main job's
    shape (rank 16 on q/k/v/o), and through that adapter merged into a full checkpoint served
    by an engine without LoRA;
(e) the critique graph on an engine with prefix caching off: what caching buys the critique
    and judge prompts, which share long prefixes.

Targets: (b)/(a) >= 0.8, (b)/(c) >= 1.5, trained/base >= 0.8. Writes JSON.

    python bench/vllm_throughput.py [--prompts 16] [--dtype float32] [--adapter DIR] [--out FILE]

``VLLM_CPU_NUM_OF_RESERVED_CPU=1`` measures with the core vLLM keeps for itself on small
machines (the backend sets it to 0 there unless it is set).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from loop_throughput import MAIN_JOB, main_job_context, warmed

from selfimprove.backends.transformers import TransformersBackend
from selfimprove.backends.vllm import VLLMBackend
from selfimprove.critique_loop import critique_many
from selfimprove.models import resolve_model
from selfimprove.sources import load_prompts
from selfimprove.types import PolicyRef

POLICY = MAIN_JOB.critique.roles.policy.sampling
# float32: on a CPU without native bfloat16 (AVX2 only) vLLM's bfloat16 generated at 0.43x
# float32's speed (36.4 against 84.0 tok/s, greedy, 16 prompts); transformers' at 0.44x
ENGINE = {"max_model_len": 1024, "dtype": "float32"}


def raw_vllm(backend: VLLMBackend, prompts: list[str], lora=None) -> dict:
    """One engine call over every prompt, straight on ``vllm.LLM``: no graph, no gathering."""
    vllm = backend._vllm
    messages = [[{"role": "user", "content": p}] for p in prompts]
    params = vllm.SamplingParams(max_tokens=POLICY.max_new_tokens, temperature=0.0)
    start = time.perf_counter()
    outs = backend._llm.chat(messages, params, lora_request=lora, use_tqdm=False)
    seconds = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def graph(backend, prompts: list[str]) -> dict:
    ctx = main_job_context(backend)
    start = time.perf_counter()
    results = asyncio.run(critique_many(prompts, ctx, max_concurrency=64))
    seconds = time.perf_counter() - start
    tokens = sum(r.generated_tokens for r in results)
    return {"prompts": len(prompts), "tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds}


def adapter_like_main_job(root: Path) -> str:
    """A LoRA adapter of the main job's shape with random weights (speed does not depend on
    the values)."""
    from peft import LoraConfig, get_peft_model

    from selfimprove.models import load_causal_lm

    model = get_peft_model(load_causal_lm(None), LoraConfig(
        r=16, lora_alpha=32, init_lora_weights=False,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    path = root / "adapter"
    model.save_pretrained(path)
    return str(path)


def merged_checkpoint(adapter: str, root: Path) -> str:
    from peft import PeftModel
    from transformers import AutoTokenizer

    from selfimprove.models import load_causal_lm

    model = PeftModel.from_pretrained(load_causal_lm(None), adapter).merge_and_unload()
    path = root / "merged"
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(resolve_model(None)).save_pretrained(path)
    return str(path)


def timed_engine(**kwargs) -> tuple[VLLMBackend, float]:
    start = time.perf_counter()
    backend = VLLMBackend(**kwargs)
    raw_vllm(backend, ["hi"])  # the first call pays one-off costs
    return backend, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--adapter", help="a trained adapter (default: random, main job shape)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/vllm_throughput.json"))
    args = parser.parse_args()
    prompts = [p for _, p in load_prompts("general")][: args.prompts]
    work = Path(tempfile.mkdtemp(prefix="vllm-bench-"))
    adapter = args.adapter or adapter_like_main_job(work)
    ENGINE["dtype"] = args.dtype
    result: dict = {"prompts": len(prompts), "engine": ENGINE}

    engine, result["engine_start_s"] = timed_engine(
        max_lora_rank=16, enable_prefix_caching=True, **ENGINE)
    result["raw_vllm"] = raw_vllm(engine, prompts)
    result["graph_vllm"] = graph(engine, prompts)
    lora = engine._lora_request(PolicyRef(version="v1", adapter_path=adapter))
    raw_vllm(engine, ["hi"], lora)  # loads the adapter
    result["raw_vllm_lora"] = raw_vllm(engine, prompts, lora)
    engine.close()

    merged, _ = timed_engine(model=merged_checkpoint(adapter, work), enable_lora=False, **ENGINE)
    result["raw_vllm_merged"] = raw_vllm(merged, prompts)
    merged.close()

    uncached, _ = timed_engine(max_lora_rank=16, enable_prefix_caching=False, **ENGINE)
    result["graph_vllm_no_prefix_cache"] = graph(uncached, prompts)
    uncached.close()

    reference = warmed(TransformersBackend(max_batch_size=32, max_wait_ms=30))
    result["graph_transformers_fp32"] = graph(reference, prompts)
    reference.close()

    tps = {k: v["tokens_per_s"] for k, v in result.items() if isinstance(v, dict) and
           "tokens_per_s" in v}
    result["ratios"] = {
        "graph_vllm_vs_raw_vllm": tps["graph_vllm"] / tps["raw_vllm"],
        "graph_vllm_vs_graph_transformers": tps["graph_vllm"] / tps["graph_transformers_fp32"],
        "lora_vs_base": tps["raw_vllm_lora"] / tps["raw_vllm"],
        "merged_vs_base": tps["raw_vllm_merged"] / tps["raw_vllm"],
        "prefix_cache_on_vs_off": tps["graph_vllm"] / tps["graph_vllm_no_prefix_cache"],
    }
    result["targets"] = {"graph_vllm_vs_raw_vllm": 0.8, "graph_vllm_vs_graph_transformers": 1.5,
                         "trained_vs_base": 0.8}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"engine start (load + first call): {result['engine_start_s']:.0f} s")
    for name, value in tps.items():
        print(f"{name:28s} {value:7.1f} tok/s")
    for name, value in result["ratios"].items():
        print(f"{name:34s} {value:5.2f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":  # vLLM starts its engine processes by spawn
    main()
