"""Local transformers backend: micro-batches concurrent requests into padded ``generate`` calls.

Many graph threads call :meth:`TransformersBackend.generate` at once, each with one or a few
conversations. A single worker thread gathers the waiting requests (up to ``max_batch_size``
rows, waiting at most ``max_wait_ms`` for more), groups them by sampling settings and runs one
left-padded batched ``generate`` per group. The worker is the only thread that touches the
model, so LoRA adapter switches are serialized with generation.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import StoppingCriteria, StoppingCriteriaList

from selfimprove.adapters import read_adapter_config
from selfimprove.backends.base import Backend
from selfimprove.errors import BackendError, PolicyError, PromptTooLongError
from selfimprove.types import Completion, Conversation, PolicyRef, SamplingParams

log = logging.getLogger(__name__)


@dataclass
class _Job:
    """One unit of work for the worker thread."""

    kind: str  # "generate" | "logprobs" | "nll" | "call"
    rows: list[Any]
    params: SamplingParams | None = None
    options: Sequence[str] = ()
    fn: Callable[[], Any] | None = None
    future: Future = field(default_factory=Future)


@dataclass
class BatchStats:
    """Counters that show whether requests are really being batched."""

    generate_calls: int = 0
    generated_rows: int = 0
    generated_tokens: int = 0
    forward_calls: int = 0
    max_rows_in_call: int = 0
    seconds_generate: float = 0.0  # in batched generate
    seconds_forward: float = 0.0  # in scoring passes (judge log-probs, NLL)


def _batch_seed(seeds: Sequence[int | None]) -> int:
    digest = hashlib.sha256(repr(tuple(seeds)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


@functools.lru_cache(maxsize=64)
def _resolved(name: str) -> str:
    """What ``name`` loads from (cached: resolving a hub id probes the hub); a name that does
    not resolve is only equal to itself."""
    from selfimprove.errors import SelfImproveError
    from selfimprove.models import resolve_model

    try:
        return resolve_model(name)
    except SelfImproveError:
        return name


class _Closing(StoppingCriteria):
    """Ends a generate call at the next token once the backend is closing (Ctrl-C, SIGTERM):
    a batch can run for minutes, and the process must not exit with it still running."""

    def __init__(self, closing: threading.Event) -> None:
        self.closing = closing

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.closing.is_set(), dtype=torch.bool,
                          device=input_ids.device)


class _RowBudget(StoppingCriteria):
    """Stopping criterion giving each row of a batch its own ``max_new_tokens``."""

    def __init__(self, prompt_len: int, budgets) -> None:
        self.prompt_len = prompt_len
        self.budgets = budgets

    def __call__(self, input_ids, scores, **kwargs):
        return (input_ids.shape[1] - self.prompt_len) >= self.budgets


class TransformersBackend(Backend):
    """Chat completions from a local transformers model, with LoRA adapter switching."""

    supports_logprobs = True

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str | None = None,
        dtype: str = "auto",
        max_batch_size: int = 32,
        max_wait_ms: float = 20.0,
        policy: PolicyRef | None = None,
    ) -> None:
        from selfimprove.models import DEFAULT_MODEL, load_causal_lm, load_tokenizer

        self.model_name = model or DEFAULT_MODEL
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.tokenizer = load_tokenizer(self.model_name)
        self.tokenizer.padding_side = "left"
        # A fast tokenizer keeps its padding setting on one shared object, set by every call:
        # a length check on the event loop (no padding) racing the batcher's padded encode left
        # the batch unpadded ("expected sequence of length 56 at dim 1 (got 58)").
        self._tokenizer_lock = threading.Lock()
        self.model = load_causal_lm(self.model_name, dtype=dtype, device=device)
        self.device = self.model.device
        self.stats = BatchStats()
        self._policy = PolicyRef(version="v0", base_model=self.model_name)
        self._dtype = dtype
        self._base_name = self.model_name
        self._serving_weights = self.model_name  # the base, or a full fine-tune's model dir
        self._models: dict[str, Any] = {}  # full models loaded so far, by name
        self._active_adapter: str | None = None
        self._merged = False  # whether the active adapter is merged into the base weights
        self._unmerged_weights: dict[str, Any] = {}  # the base weights the merge changed
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._closing = threading.Event()
        self._worker = threading.Thread(target=self._run, name="selfimprove-batcher", daemon=True)
        self._worker.start()
        if policy is not None and (policy.adapter_path or policy.base_model != self.model_name):
            self._submit(_Job("call", [], fn=lambda: self._switch(policy))).result()

    def __repr__(self) -> str:
        return f"TransformersBackend(model={self.model_name!r}, policy={self._policy.version!r})"

    # ---- public async API -------------------------------------------------------------

    async def generate(
        self, conversations: Sequence[Conversation], params: SamplingParams
    ) -> list[list[Completion]]:
        rows = [conv for conv in conversations for _ in range(params.n)]
        if not rows:
            return []
        self._check_lengths(conversations, params.max_new_tokens)
        out = await asyncio.wrap_future(self._submit(_Job("generate", rows, params=params)))
        return [out[i * params.n : (i + 1) * params.n] for i in range(len(conversations))]

    async def option_logprobs(
        self, conversations: Sequence[Conversation], options: Sequence[str]
    ) -> list[dict[str, float]]:
        if not conversations:
            return []
        self._check_lengths(conversations, 1)
        job = _Job("logprobs", list(conversations), options=tuple(options))
        return await asyncio.wrap_future(self._submit(job))

    async def sequence_nll(self, texts: Sequence[str], max_length: int = 256) -> list[float]:
        """Mean per-token negative log-likelihood of plain texts under the served policy."""
        job = _Job("nll", list(texts), options=(str(max_length),))
        return await asyncio.wrap_future(self._submit(job))

    async def load_policy(self, policy: PolicyRef) -> None:
        await asyncio.wrap_future(self._submit(_Job("call", [], fn=lambda: self._switch(policy))))

    @property
    def policy(self) -> PolicyRef:
        return self._policy

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        if self._worker.is_alive():
            self._closing.set()
            self._queue.put(None)
            self._worker.join(timeout=30)

    # ---- worker thread ----------------------------------------------------------------

    def _submit(self, job: _Job) -> Future:
        if not self._worker.is_alive():
            raise BackendError("the backend is closed")
        self._queue.put(job)
        return job.future

    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                first = self._queue.get()
                if first is None:
                    return
                jobs = [first]
                if first.kind != "call":
                    jobs += self._gather(len(first.rows))
                stop = jobs[-1] is None
                jobs = [j for j in jobs if j is not None]
                self._execute(jobs)
                if stop:
                    return

    def _gather(self, rows: int) -> list[_Job | None]:
        """Collect more waiting jobs until the batch is full or the wait is over."""
        got: list[_Job | None] = []
        deadline = time.monotonic() + self.max_wait_s
        while rows < self.max_batch_size:
            timeout = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=max(timeout, 0)) if timeout > 0 else (
                    self._queue.get_nowait()
                )
            except queue.Empty:
                break
            got.append(job)
            if job is None or job.kind == "call":
                break  # keep adapter switches ordered with respect to generation
            rows += len(job.rows)
        return got

    def _execute(self, jobs: list[_Job]) -> None:
        groups: dict[Any, list[_Job]] = defaultdict(list)
        for job in jobs:
            if job.kind == "call":
                self._finish([job], lambda j=job: [j.fn()])
                continue
            if job.kind == "generate":
                p = job.params
                assert p is not None
                # Rows with different lengths or stops share a batch: a per-row budget stops
                # each row, and stop strings are applied afterwards.
                key = ("generate", p.temperature, p.top_p)
            else:
                key = (job.kind, tuple(job.options))
            groups[key].append(job)
        for key, group in groups.items():
            runner = {"generate": self._generate_rows, "logprobs": self._logprob_rows,
                      "nll": self._nll_rows}[key[0]]
            self._finish(group, lambda g=group, r=runner: r(g))

    def _finish(self, jobs: list[_Job], compute: Callable[[], list[Any]]) -> None:
        """Run ``compute`` (one flat result per row) and hand each job its slice."""
        try:
            results = compute()
        except Exception as exc:  # noqa: BLE001 - delivered to the awaiting caller
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        if len(jobs) == 1 and jobs[0].kind == "call":
            if not jobs[0].future.done():
                jobs[0].future.set_result(results[0])
            return
        start = 0
        for job in jobs:
            # A caller that gave up (its task was cancelled) gets nothing; setting its result
            # would raise here and kill the batcher thread, leaving every later call waiting.
            if not job.future.done():
                job.future.set_result(results[start : start + len(job.rows)])
            start += len(job.rows)

    def _chat_texts(self, conversations: Sequence[Conversation]) -> list[str]:
        return [
            self.tokenizer.apply_chat_template(
                [m.model_dump() for m in conv], add_generation_prompt=True, tokenize=False
            )
            for conv in conversations
        ]

    @property
    def max_positions(self) -> int | None:
        """How many tokens the model can attend to (prompt and reply together)."""
        return getattr(self.model.config, "max_position_embeddings", None)

    def _check_lengths(self, conversations: Sequence[Conversation], new_tokens: int) -> None:
        """Refuse a prompt the model cannot hold, before it reaches the batch.

        Cutting it silently would answer a question nobody asked; past the model's positions
        generation is garbage or fails deep inside the model, after minutes of work.
        """
        limit = self.max_positions
        if limit is None:
            return
        texts = self._chat_texts(conversations)
        with self._tokenizer_lock:
            encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        lengths = [len(ids) for ids in encoded]
        for i, n in enumerate(lengths):
            if n + new_tokens > limit:
                raise PromptTooLongError(
                    f"conversation {i + 1} has {n} tokens; with {new_tokens} new tokens "
                    f"it exceeds the {limit} positions of {self.model_name}: shorten the prompt"
                )

    def _encode(self, texts: list[str], max_length: int | None = None):
        with self._tokenizer_lock:
            enc = self.tokenizer(
                texts,
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
                truncation=max_length is not None,
                max_length=max_length,
            )
        return {k: v.to(self.device) for k, v in enc.items()}

    def _adapter_context(self):
        """Run the base model when no adapter is active (PEFT keeps loaded adapters around)."""
        import contextlib

        if self._active_adapter is None and hasattr(self.model, "disable_adapter"):
            return self.model.disable_adapter()
        return contextlib.nullcontext()

    def _generate_rows(self, group: list[_Job]) -> list[Completion]:
        import torch

        rows = [(conv, job.params) for job in group for conv in job.rows]
        out: list[Completion] = []
        for start in range(0, len(rows), self.max_batch_size):
            out += self._generate_chunk(rows[start : start + self.max_batch_size], torch)
        return out

    def _generate_chunk(self, rows, torch) -> list[Completion]:
        params: SamplingParams = rows[0][1]
        budgets = [p.max_new_tokens for _, p in rows]
        enc = self._encode(self._chat_texts([conv for conv, _ in rows]))
        sampling = params.temperature > 0
        kwargs: dict[str, Any] = {"max_new_tokens": max(budgets), "do_sample": sampling}
        criteria: list[StoppingCriteria] = [_Closing(self._closing)]
        if len(set(budgets)) > 1:
            prompt_len = enc["input_ids"].shape[1]
            criteria.append(_RowBudget(prompt_len, torch.tensor(budgets, device=self.device)))
        kwargs["stopping_criteria"] = StoppingCriteriaList(criteria)
        if sampling:
            kwargs |= {"temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
            torch.manual_seed(_batch_seed([p.seed for _, p in rows]))
        else:
            kwargs |= {"temperature": None, "top_p": None, "top_k": None}
        t0 = time.perf_counter()
        with self._adapter_context():
            generated = self.model.generate(
                **enc, **kwargs, pad_token_id=self.tokenizer.pad_token_id
            )
        seconds = time.perf_counter() - t0
        self.stats.seconds_generate += seconds
        log.debug("generate: %d rows, %d prompt tokens (padded), %d new tokens, %.1f s",
                  len(rows), enc["input_ids"].shape[1], generated.shape[1] -
                  enc["input_ids"].shape[1], seconds)
        new = generated[:, enc["input_ids"].shape[1] :]
        eos_ids = set(self._eos_ids())
        completions = []
        for seq, (_, p) in zip(new.tolist(), rows, strict=True):
            seq = seq[: p.max_new_tokens]
            n = next((i + 1 for i, t in enumerate(seq) if t in eos_ids), None)
            finish = "stop" if n is not None else "length"
            n = n if n is not None else len(seq)
            text = self.tokenizer.decode(seq[:n], skip_special_tokens=True).strip()
            text, stopped = _truncate_at_stop(text, p.stop)
            completions.append(
                Completion(text=text, num_tokens=n, finish_reason="stop" if stopped else finish)
            )
        self.stats.generate_calls += 1
        self.stats.generated_rows += len(rows)
        self.stats.generated_tokens += sum(c.num_tokens for c in completions)
        self.stats.max_rows_in_call = max(self.stats.max_rows_in_call, len(rows))
        return completions

    def _eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        ids = eos if isinstance(eos, list) else [eos]
        return [i for i in ids + [self.tokenizer.eos_token_id] if i is not None]

    def option_token_ids(self, options: Sequence[str]) -> list[int]:
        ids = []
        for opt in options:
            toks = self.tokenizer.encode(opt, add_special_tokens=False)
            if not toks:
                raise ValueError(f"option {opt!r} encodes to no tokens")
            ids.append(toks[0])
        if len(set(ids)) != len(ids):
            raise ValueError(f"options {list(options)} share a first token; use distinct options")
        return ids

    def _logprob_rows(self, group: list[_Job]) -> list[dict[str, float]]:
        import torch

        options = list(group[0].options)
        ids = self.option_token_ids(options)
        convs = [conv for job in group for conv in job.rows]
        out: list[dict[str, float]] = []
        for start in range(0, len(convs), self.max_batch_size):
            enc = self._encode(self._chat_texts(convs[start : start + self.max_batch_size]))
            t0 = time.perf_counter()
            with self._adapter_context():
                # Only the last position's logits: the full (batch × length × vocab) tensor
                # would cost more than the forward pass itself.
                logits = self.model(**enc, logits_to_keep=1).logits[:, -1, :].float()
            self.stats.seconds_forward += time.perf_counter() - t0
            self.stats.forward_calls += 1
            logp = torch.log_softmax(logits, dim=-1)[:, ids]
            out += [dict(zip(options, row, strict=True)) for row in logp.tolist()]
        return out

    def _nll_rows(self, group: list[_Job]) -> list[float]:
        import torch

        max_length = int(group[0].options[0])
        texts = [t for job in group for t in job.rows]
        out: list[float] = []
        self.tokenizer.padding_side = "right"
        try:
            for start in range(0, len(texts), self.max_batch_size):
                enc = self._encode(texts[start : start + self.max_batch_size], max_length)
                t0 = time.perf_counter()
                with self._adapter_context():
                    logits = self.model(**enc).logits[:, :-1, :].float()
                self.stats.seconds_forward += time.perf_counter() - t0
                target = enc["input_ids"][:, 1:]
                mask = enc["attention_mask"][:, 1:].float()
                nll = torch.nn.functional.cross_entropy(
                    logits.transpose(1, 2), target, reduction="none"
                )
                out += ((nll * mask).sum(1) / mask.sum(1).clamp(min=1)).tolist()
        finally:
            self.tokenizer.padding_side = "left"
        return out

    def _merge(self) -> None:
        """Merge the active adapter, keeping the base weights it changes to restore later.

        Unmerging subtracts the adapter again, which in bfloat16 rounds every merged weight
        (~0.4% each time): over the gate's many switches the base would drift.
        """
        from peft.tuners.lora import LoraLayer

        self._unmerged_weights = {
            name: module.get_base_layer().weight.detach().clone()
            for name, module in self.model.named_modules()
            if isinstance(module, LoraLayer)
        }
        self.model.merge_adapter()
        self._merged = True

    def _unmerge(self) -> None:
        if not self._merged:
            return
        import torch

        self.model.unmerge_adapter()
        modules = dict(self.model.named_modules())
        with torch.no_grad():
            for name, weight in self._unmerged_weights.items():
                modules[name].get_base_layer().weight.copy_(weight)
        self._unmerged_weights = {}
        self._merged = False

    @staticmethod
    def _same_model(a: str, b: str) -> bool:
        return a == b or _resolved(a) == _resolved(b)

    def _use_weights(self, policy: PolicyRef, name: str) -> None:
        """Serve the full model ``name``: the base, or a full fine-tune's weights.

        Models are kept once loaded, so switching back and forth reloads nothing; LoRA
        adapters live on the base model only.
        """
        if self._same_model(name, self._serving_weights):
            return
        key = self._base_name if self._same_model(name, self._base_name) else name
        self._models[self._serving_weights] = self.model
        model = self._models.get(key)
        if model is None:
            from selfimprove.models import load_causal_lm

            try:
                model = load_causal_lm(key, dtype=self._dtype, device=str(self.device))
            except Exception as exc:  # noqa: BLE001 - the previous policy keeps serving
                raise PolicyError(
                    f"cannot load policy {policy.version} (a full model at {key}): {exc}; "
                    f"still serving {self._policy.version}"
                ) from exc
            model.eval()
        self.model = model
        self._serving_weights = key

    def _switch(self, policy: PolicyRef) -> None:
        """Activate ``policy``'s adapter (loading it once) or the bare base model.

        The active adapter is merged into the base weights, so serving a trained policy costs
        no more than serving the base (unmerged LoRA layers slow every forward by about a
        third on a CPU); switching unmerges it first, so the base weights come back.
        """
        if policy.adapter_path is None:
            self._use_weights(policy, policy.base_model)
            if self._serving_weights == self._base_name:
                self._unmerge()
                self._active_adapter = None
            self._policy = policy
            return
        if not self._same_model(policy.base_model, self._base_name):
            raise PolicyError(
                f"cannot load policy {policy.version}: its adapter is for "
                f"'{policy.base_model}', but this backend serves '{self._base_name}'"
            )

        self._use_weights(policy, self._base_name)
        # Named by version and path: two runs (or the loop and its control arm) both have a
        # "v2", and PEFT keeps adapters by name, so the name alone would serve the wrong one.
        digest = hashlib.sha256(str(Path(policy.adapter_path).resolve()).encode()).hexdigest()
        name = f"{policy.version}-{digest[:10]}"
        try:
            read_adapter_config(policy.adapter_path, name)
            if not hasattr(self.model, "peft_config"):
                from peft import PeftModel

                self.model = PeftModel.from_pretrained(
                    self.model, policy.adapter_path, adapter_name=name
                )
                self.model.eval()
            else:
                self._unmerge()  # before load_adapter: PEFT warns when the model is merged
                if name not in self.model.peft_config:
                    self.model.load_adapter(policy.adapter_path, adapter_name=name)
            self.model.set_adapter(name)
            self._merge()
        except Exception as exc:  # noqa: BLE001 - the previous policy keeps serving
            raise PolicyError(
                f"cannot load policy {name} from {policy.adapter_path}: {exc}; "
                f"still serving {self._policy.version}"
            ) from exc
        self._active_adapter = name
        self._policy = policy
