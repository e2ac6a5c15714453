"""A backend for any OpenAI-compatible chat-completions server.

Works with ``vllm serve``, ``transformers serve``, Ollama and OpenAI. It talks HTTP through
``httpx`` directly (not the ``openai`` SDK, which retries on its own) so that there is exactly one
retry layer: tenacity, here. Retried: HTTP 408, 409, 429, 5xx, connection errors and timeouts,
with exponential backoff plus jitter, honouring ``Retry-After`` on 429/503. Never retried: any
other status (400, 401, 403, 404, 422, ...), which raises :class:`HTTPBackendError` at once.

The API key comes from an environment variable only and is never logged, shown in ``repr`` or
put in an error message. Whatever a server sends back is masked before it is cut to length: every
run of 4 or more characters of the key (or of its URL-encoded or base64 forms) becomes ``***``, so
neither a whole key nor a fragment split at the cut survives. ``httpx``/``httpcore`` debug lines
(which print response headers, where a careless server may echo the key) pass through a logging
filter that masks the same way.

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
import base64
import email.utils
import logging
import math
import os
import threading
import urllib.parse
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

from selfimprove.backends.base import Backend, refuse_full_model
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
_MAX_BODY_PREVIEW_CHARS = 200
_MASK = "***"
#: the shortest run of key characters that is masked; shorter runs are too common to mask
_MIN_SECRET_FRAGMENT = 4
#: loggers of the HTTP stack; httpcore's debug lines print response headers in full
_TRANSPORT_LOGGERS = (
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.connection_pool",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)


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
    """The server's own error message from an OpenAI, vLLM or FastAPI style error body.

    Returned whole: the caller masks the API key first and cuts afterwards.
    """
    try:
        data = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        for key in ("message", "detail"):
            if data.get(key):
                return str(data[key])
    return str(data)


class _SecretMasker:
    """Replaces every run of at least 4 characters found inside a secret with ``***``.

    Masking fragments, not just whole occurrences, is what keeps a key out of text that was cut
    mid-key (by the server or by us) and out of partial echoes such as ``sk-abc...wxyz``. The
    URL-encoded and base64 forms (of the key and of ``Bearer <key>``) are masked the same way.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if not secret:
                continue
            forms.add(secret)
            forms.add(urllib.parse.quote(secret, safe=""))
            for raw in (secret, f"Bearer {secret}"):
                forms.add(base64.b64encode(raw.encode()).decode())
        n = _MIN_SECRET_FRAGMENT
        self._forms = tuple(sorted(forms))
        self._short = tuple(f for f in self._forms if len(f) < n)
        # every n-gram of every form: a cheap first test at each position of the text
        self._grams = frozenset(f[i : i + n] for f in self._forms for i in range(len(f) - n + 1))

    def __bool__(self) -> bool:
        return bool(self._forms)

    def mask(self, text: str) -> str:
        for short in self._short:  # too short to have fragments: mask whole occurrences
            text = text.replace(short, _MASK)
        if not self._grams:
            return text
        n = _MIN_SECRET_FRAGMENT
        out: list[str] = []
        start = i = 0
        while i <= len(text) - n:
            if text[i : i + n] not in self._grams:
                i += 1
                continue
            end = i + n  # grow the run while it is still inside some form of the secret
            while end < len(text) and any(text[i : end + 1] in f for f in self._forms):
                end += 1
            out += (text[start:i], _MASK)
            start = i = end
        out.append(text[start:])
        return "".join(out)


def _clip(text: str, limit: int) -> str:
    """Cut already-masked text to ``limit`` characters (cutting after masking leaks nothing)."""
    return text if len(text) <= limit else text[:limit]


def _mask_then_clip(masker: _SecretMasker, text: str, limit: int) -> str:
    """``text`` masked, then cut to ``limit`` characters.

    Only the first ``2 * limit`` characters are scanned, to bound the work on a huge body. A key
    cut there leaves at most a 3-character stub at the window's end, and the final cut drops it:
    masking shrinks a run by at most a quarter, so the stub lies past ``limit``.
    """
    return _clip(masker.mask(text[: 2 * limit]), limit)


class _RedactingFilter(logging.Filter):
    """Masks API keys in log records of the loggers it is attached to; drops nothing.

    Chosen over raising the HTTP loggers to INFO: a level is one global setting that any later
    ``setLevel``, ``dictConfig`` or ``caplog.set_level(DEBUG)`` turns back (and that would need
    restoring when the last backend closes), while a filter stays attached (``dictConfig``
    replaces handlers, never logger filters) and leaves transport debugging usable. It is
    attached to each HTTP logger by name because a logger's filters never see records that
    propagate up from its children.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: frozenset[str] = frozenset()
        self._masker = _SecretMasker(())

    def add_secret(self, secret: str) -> None:
        with self._lock:
            self._secrets = self._secrets | {secret}
            self._masker = _SecretMasker(self._secrets)  # swapped whole: readers take no lock

    def filter(self, record: logging.LogRecord) -> bool:
        masker = self._masker
        if not masker:
            return True
        try:
            message = record.getMessage()
        except Exception:  # logging would print msg and args raw when reporting this error
            message = f"{record.msg} {record.args}"
        masked = masker.mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            # formatted here so handlers use the masked text (Formatter reuses exc_text)
            record.exc_text = masker.mask(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = masker.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = masker.mask(record.stack_info)
        return True


_REDACTING_FILTER = _RedactingFilter()


def _protect_logs(secret: str) -> None:
    """Mask ``secret`` in this module's and the HTTP stack's log records from now on."""
    _REDACTING_FILTER.add_secret(secret)
    names = {*_TRANSPORT_LOGGERS, __name__}
    # also any httpx/httpcore logger that exists already under a name not listed above
    names.update(
        name
        for name in list(logging.Logger.manager.loggerDict)
        if name.split(".", 1)[0] in ("httpx", "httpcore")
    )
    for name in sorted(names):
        logging.getLogger(name).addFilter(_REDACTING_FILTER)  # addFilter skips duplicates


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
        self._masker = _SecretMasker([raw_key] if raw_key else [])
        headers = {"Content-Type": "application/json"}
        if raw_key:
            _protect_logs(raw_key)  # before the first request can log a header
            headers["Authorization"] = f"Bearer {raw_key}"
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
        refuse_full_model("an OpenAI-compatible server", policy)
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
        return self._masker.mask(text)

    async def _post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self._post(path, body)
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            preview = _mask_then_clip(self._masker, response.text, _MAX_BODY_PREVIEW_CHARS)
            raise HTTPBackendError(
                f"{self._where(path)}: expected a JSON object, got {preview!r}",
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
            failure = self._redact(f"{type(exc).__name__}: {exc}")
            raise _RetryableError(f"connection failed ({failure})") from None
        status = response.status_code
        if status < 400:
            return response
        # mask first, then cut: a key straddling the cut must not leave its prefix behind
        detail = _mask_then_clip(self._masker, _error_message(response), _MAX_MESSAGE_CHARS)
        message = f"HTTP {status}: {detail}"
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
