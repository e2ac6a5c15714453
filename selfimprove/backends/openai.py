"""A backend for any OpenAI-compatible chat-completions server.

Works with ``vllm serve``, ``transformers serve``, Ollama and OpenAI. It talks HTTP through
``httpx`` directly (not the ``openai`` SDK, which retries on its own) so that there is exactly one
retry layer: tenacity, here. Retried: HTTP 408, 409, 429, 5xx, connection errors and timeouts,
with exponential backoff plus jitter, honouring ``Retry-After`` on 429/503. Never retried: any
other status (400, 401, 403, 404, 422, ...), which raises :class:`HTTPBackendError` at once.

The API key comes from an environment variable only and is never logged, shown in ``repr`` or
put in an error message (a server that echoes it back has it masked).

Server differences handled here:

- a server that ignores ``n`` (``transformers serve``, Ollama) gets ``n`` separate requests,
  with seeds ``seed, seed+1, ...`` when a seed is set; greedy requests (``temperature == 0``)
  with ``n > 1`` are sent once and the answer copied (vLLM rejects ``n > 1`` when greedy);
- returned text is cut at the first stop sequence (``transformers serve`` keeps it, OpenAI and
  vLLM drop it), so every server behaves like OpenAI;
- a server that ignores or rejects ``logprobs`` turns :attr:`OpenAIBackend.supports_logprobs`
  off and :meth:`OpenAIBackend.option_logprobs` raises :class:`LogprobsUnsupportedError`.
  ``transformers serve`` (5.x) ignores ``logprobs``/``top_logprobs`` on chat completions.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import os
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

import httpx
from pydantic import SecretStr
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)
from tenacity.wait import wait_base

from selfimprove.backends.base import Backend
from selfimprove.errors import BackendError
from selfimprove.types import Completion, Conversation, PolicyRef, SamplingParams

__all__ = [
    "HTTPBackendError",
    "LogprobsUnsupportedError",
    "OpenAIBackend",
    "RETRY_STATUSES",
    "logprobs_for_options",
    "parse_retry_after",
]

logger = logging.getLogger(__name__)

#: statuses worth another try: timeouts, conflicts, rate limits and server errors
RETRY_STATUSES = frozenset({408, 409, 429, *range(500, 600)})
_RETRY_AFTER_STATUSES = frozenset({429, 503})
_CHAT_PATH = "/v1/chat/completions"
_LOAD_LORA_PATH = "/v1/load_lora_adapter"
_UNLOAD_LORA_PATH = "/v1/unload_lora_adapter"
_MAX_MESSAGE_CHARS = 500


class HTTPBackendError(BackendError):
    """An HTTP backend call failed for good.

    ``status`` is the last HTTP status (``None`` for connection errors and timeouts) and
    ``attempts`` how many requests were made.
    """

    def __init__(self, message: str, status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


class LogprobsUnsupportedError(BackendError, NotImplementedError):
    """The server does not return log-probabilities; judges fall back to generated verdicts."""


class _RetryableError(Exception):
    """One failed attempt that may succeed when repeated (never leaves this module)."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())


class _wait_retry_after(wait_base):
    """Exponential backoff with jitter, but at least the server's ``Retry-After`` (capped)."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self._backoff = wait_exponential(multiplier=initial_s, max=max_s) + wait_random(
            0, initial_s
        )
        self._max_s = max_s

    def __call__(self, retry_state: RetryCallState) -> float:
        delay = min(self._backoff(retry_state), self._max_s)
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        hint = getattr(exc, "retry_after", None)
        if hint is not None:
            delay = max(delay, min(hint, self._max_s))
        return delay


def logprobs_for_options(
    top: Iterable[tuple[str, float]], options: Sequence[str]
) -> dict[str, float]:
    """Map the first token's top log-probabilities onto ``options``.

    A token matches an option when both are equal after stripping whitespace (case-sensitive);
    several matching tokens (``"A"`` and ``" A"``) have their probabilities added. An option
    absent from the list gets an upper bound on its log-probability: the smaller of the lowest
    listed log-probability and the log of the probability mass left unlisted. A bound rather
    than ``-inf`` keeps soft labels from claiming more certainty than the top list shows.
    """
    pairs = [(tok, lp) for tok, lp in top if math.isfinite(lp)]
    if not pairs:
        raise ValueError("no finite log-probabilities to match options against")
    matched: dict[str, list[float]] = {opt: [] for opt in options}
    for tok, lp in pairs:
        key = tok.strip()
        for opt in options:
            if key and key == opt.strip():
                matched[opt].append(lp)
    listed_mass = min(1.0, sum(math.exp(lp) for _, lp in pairs))
    floor = min(min(lp for _, lp in pairs), math.log(max(1.0 - listed_mass, 1e-12)))
    return {opt: _logsumexp(lps) if lps else floor for opt, lps in matched.items()}


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` at the first stop sequence; report whether one was found."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def _split_tokens(total: int | None, parts: int) -> list[int]:
    """Split a response's token total over its choices so sums stay exact (0 when unknown)."""
    if not total or parts <= 0:
        return [0] * max(parts, 0)
    base, extra = divmod(int(total), parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _error_message(response: httpx.Response) -> str:
    """The server's own error message from an OpenAI, vLLM or FastAPI style error body."""
    try:
        data = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:_MAX_MESSAGE_CHARS] or response.reason_phrase
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:_MAX_MESSAGE_CHARS]
        if isinstance(err, str):
            return err[:_MAX_MESSAGE_CHARS]
        for key in ("message", "detail"):
            if data.get(key):
                return str(data[key])[:_MAX_MESSAGE_CHARS]
    return str(data)[:_MAX_MESSAGE_CHARS]


class OpenAIBackend(Backend):
    """Chat completions from an OpenAI-compatible server.

    ``base_url`` is the server root, with or without a trailing ``/v1``. ``model`` is the name
    the server serves the base model under (``transformers serve`` wants the exact path it was
    started with). ``api_key_env`` names the environment variable holding the API key; when the
    variable is unset no ``Authorization`` header is sent (local servers need none).

    :attr:`supports_logprobs` starts True and turns False, for the life of the backend, once
    the server ignores or rejects ``logprobs``; callers check it before asking.

    :meth:`load_policy` uses vLLM's runtime LoRA endpoints (a server started with
    ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``). ``PolicyRef.base_model`` is
    not checked: the server decides its base model.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout_s: float = 60.0,
        max_attempts: int = 5,
        max_concurrency: int = 32,
        initial_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        top_logprobs: int = 20,
        unload_previous: bool = False,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        root = base_url.rstrip("/")
        self.base_url = root[: -len("/v1")] if root.endswith("/v1") else root
        self.base_model = model
        self.api_key_env = api_key_env
        self.max_attempts = max_attempts
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.top_logprobs = top_logprobs
        self.unload_previous = unload_previous
        self.supports_logprobs = True
        self._model = model
        self._policy: PolicyRef | None = None
        self._loaded_adapters: dict[str, str] = {}  # adapter name -> path
        self._n_supported: bool | None = None  # unknown until a response to n > 1 shows it
        # SecretStr: the key stays out of repr()/tracebacks of anything holding it
        raw_key = os.environ.get(api_key_env) if api_key_env else None
        self._api_key = SecretStr(raw_key) if raw_key else None
        headers = {"Content-Type": "application/json"}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(
                max_connections=max_concurrency, max_keepalive_connections=max_concurrency
            ),
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(base_url={self.base_url!r}, model={self._model!r}, "
            f"api_key_env={self.api_key_env!r})"
        )

    @property
    def model(self) -> str:
        """The model name requests use now: the base model or the current adapter's name."""
        return self._model

    @property
    def policy(self) -> PolicyRef | None:
        return self._policy

    # ----- the Backend contract -----

    async def generate(
        self, conversations: Sequence[Conversation], params: SamplingParams
    ) -> list[list[Completion]]:
        return list(
            await asyncio.gather(*(self._generate_one(conv, params) for conv in conversations))
        )

    async def option_logprobs(
        self, conversations: Sequence[Conversation], options: Sequence[str]
    ) -> list[dict[str, float]]:
        if not self.supports_logprobs:
            raise LogprobsUnsupportedError(self._no_logprobs_message())
        jobs = (self._option_logprobs_one(conv, options) for conv in conversations)
        return list(await asyncio.gather(*jobs))

    async def load_policy(self, policy: PolicyRef) -> None:
        """Serve ``policy``: load its adapter on the server and send requests to it.

        A policy without an adapter switches back to the base model. On failure the previous
        policy keeps serving.
        """
        previous = self._model
        if policy.adapter_path is None:
            target = self.base_model
        else:
            target = policy.version
            loaded_from = self._loaded_adapters.get(target)
            if loaded_from is None:
                await self._load_adapter(policy, previous)
            elif loaded_from != policy.adapter_path:
                raise HTTPBackendError(
                    f"adapter '{target}' is already loaded from {loaded_from}, not "
                    f"{policy.adapter_path}: policy versions must name one adapter; "
                    f"still serving '{previous}'"
                )
        self._model = target
        self._policy = policy
        if self.unload_previous and previous != target and previous in self._loaded_adapters:
            await self._unload(previous)

    async def _load_adapter(self, policy: PolicyRef, previous: str) -> None:
        assert policy.adapter_path is not None
        body = {"lora_name": policy.version, "lora_path": policy.adapter_path}
        try:
            await self._post(_LOAD_LORA_PATH, body, model=policy.version)
        except HTTPBackendError as exc:
            # loaded by an earlier process against the same server: fine, it serves already
            if exc.status == 400 and "already" in str(exc).lower():
                logger.info("adapter '%s' was already loaded on the server", policy.version)
            else:
                hint = ""
                if exc.status in (404, 405):
                    hint = (
                        " (the server has no runtime LoRA endpoint: start vLLM with "
                        "--enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)"
                    )
                raise HTTPBackendError(
                    f"could not load adapter '{policy.version}' from {policy.adapter_path}: "
                    f"{exc}{hint}; still serving '{previous}'",
                    status=exc.status,
                    attempts=exc.attempts,
                ) from None
        self._loaded_adapters[policy.version] = policy.adapter_path

    async def aclose(self) -> None:
        await self._client.aclose()

    # ----- requests -----

    def _chat_body(self, conv: Conversation, params: SamplingParams, n: int, seed: int | None):
        body: dict[str, Any] = {
            "model": self._model,
            "messages": [{"role": m.role, "content": m.content} for m in conv],
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if n > 1:
            body["n"] = n
        if seed is not None:
            body["seed"] = seed
        if params.stop:  # an empty list makes some servers fail (transformers serve: HTTP 500)
            body["stop"] = list(params.stop)
        return body

    async def _generate_one(self, conv: Conversation, params: SamplingParams) -> list[Completion]:
        n, seed = params.n, params.seed
        if params.temperature == 0 and n > 1:
            # greedy samples are identical, and vLLM rejects n > 1 with greedy decoding
            got = await self._chat(self._chat_body(conv, params, 1, seed), params)
            return [got[0]] * n
        if n == 1 or self._n_supported is not False:
            got = await self._chat(self._chat_body(conv, params, n, seed), params)
            if len(got) >= n:
                if n > 1:
                    self._n_supported = True
                return got[:n]
            if self._n_supported is None:
                logger.info("%s ignores n > 1; sending one request per sample", self.base_url)
            self._n_supported = False
        else:
            got: list[Completion] = []
        rest = await asyncio.gather(
            *(
                self._chat(
                    self._chat_body(conv, params, 1, None if seed is None else seed + i), params
                )
                for i in range(len(got), n)
            )
        )
        return got + [extra[0] for extra in rest]

    async def _chat(self, body: dict[str, Any], params: SamplingParams) -> list[Completion]:
        data = await self._post_json(_CHAT_PATH, body)
        choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
        if not choices:
            raise HTTPBackendError(f"{self._where(_CHAT_PATH)}: the response has no choices")
        usage = data.get("usage") or {}
        tokens = _split_tokens(usage.get("completion_tokens"), len(choices))
        out = []
        for choice, num_tokens in zip(choices, tokens, strict=True):
            text = (choice.get("message") or {}).get("content") or ""
            text, stopped = _cut_at_stop(text, params.stop)
            finish = "length" if choice.get("finish_reason") == "length" and not stopped else "stop"
            out.append(Completion(text=text, num_tokens=num_tokens, finish_reason=finish))
        return out

    async def _option_logprobs_one(
        self, conv: Conversation, options: Sequence[str]
    ) -> dict[str, float]:
        body = {
            "model": self._model,
            "messages": [{"role": m.role, "content": m.content} for m in conv],
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": self.top_logprobs,
        }
        try:
            data = await self._post_json(_CHAT_PATH, body)
        except HTTPBackendError as exc:
            if exc.status in (400, 422) and "logprob" in str(exc).lower():
                self.supports_logprobs = False
                raise LogprobsUnsupportedError(f"{self._no_logprobs_message()}: {exc}") from None
            raise
        try:
            first = data["choices"][0]["logprobs"]["content"][0]
            top = [(t["token"], float(t["logprob"])) for t in first["top_logprobs"]]
            return logprobs_for_options(top, options)
        except (KeyError, IndexError, TypeError, ValueError):
            self.supports_logprobs = False
            raise LogprobsUnsupportedError(
                f"{self._no_logprobs_message()}: the response has no top_logprobs"
            ) from None

    async def _unload(self, name: str) -> None:
        try:
            await self._post(_UNLOAD_LORA_PATH, {"lora_name": name}, model=name)
        except BackendError as exc:  # the new policy already serves; a leftover costs memory only
            logger.warning("could not unload adapter '%s': %s", name, exc)
        else:
            self._loaded_adapters.pop(name, None)

    def _no_logprobs_message(self) -> str:
        return f"{self.base_url} (model {self._model}) does not return log-probabilities"

    def _where(self, path: str, model: str | None = None) -> str:
        return f"POST {self.base_url}{path} (model {model or self._model})"

    def _redact(self, text: str) -> str:
        if self._api_key is not None:
            secret = self._api_key.get_secret_value()
            text = text.replace(secret, "***")
        return text

    async def _post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self._post(path, body)
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise HTTPBackendError(
                f"{self._where(path)}: expected a JSON object, got "
                f"{self._redact(response.text[:200])!r}",
                status=response.status_code,
            )
        return data

    async def _post(
        self, path: str, body: dict[str, Any], model: str | None = None
    ) -> httpx.Response:
        """POST with the one retry layer; raise :class:`HTTPBackendError` when it gives up."""
        where = self._where(path, model or body.get("model"))
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=_wait_retry_after(self.initial_backoff_s, self.max_backoff_s),
            retry=retry_if_exception_type(_RetryableError),
            before_sleep=lambda state: self._log_retry(where, state),
            reraise=False,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    number = attempt.retry_state.attempt_number
                    return await self._attempt(path, body, where, number)
        except RetryError as err:
            last = err.last_attempt.exception()
            raise HTTPBackendError(
                f"{where}: gave up after {self.max_attempts} attempts; last error: {last}",
                status=getattr(last, "status", None),
                attempts=self.max_attempts,
            ) from None
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _attempt(
        self, path: str, body: dict[str, Any], where: str, attempt: int
    ) -> httpx.Response:
        try:
            async with self._semaphore:
                response = await self._client.post(path, json=body)
        except httpx.TimeoutException as exc:
            raise _RetryableError(f"timed out ({type(exc).__name__})") from None
        except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise _RetryableError(f"connection failed ({type(exc).__name__}: {exc})") from None
        status = response.status_code
        if status < 400:
            return response
        message = f"HTTP {status}: {self._redact(_error_message(response))}"
        if status in RETRY_STATUSES:
            retry_after = None
            if status in _RETRY_AFTER_STATUSES:
                retry_after = parse_retry_after(response.headers.get("retry-after"))
            raise _RetryableError(message, status=status, retry_after=retry_after)
        if status == 401 and self.api_key_env:
            message += f" (is ${self.api_key_env} set to a valid key?)"
        raise HTTPBackendError(
            f"{where}: {message} (attempt {attempt}, not retried)", status=status, attempts=attempt
        )

    def _log_retry(self, where: str, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        logger.warning(
            "%s failed (%s); attempt %d of %d, retrying in %.2f s",
            where, exc, state.attempt_number, self.max_attempts, delay,
        )
