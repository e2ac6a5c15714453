"""LoRA adapter directories: the one check that a directory holds a usable adapter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selfimprove.errors import PolicyError

__all__ = ["WEIGHT_FILES", "read_adapter_config"]

WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def read_adapter_config(path: str | Path, version: str) -> dict[str, Any]:
    """The adapter's ``adapter_config.json`` after checking its weights are there too.

    Raises :class:`PolicyError` naming ``version``, the file and what is wrong.
    """
    adapter = Path(path)
    config_path = adapter / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PolicyError(f"policy {version}: {config_path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PolicyError(f"policy {version}: {config_path} is not JSON ({exc})") from None
    if not isinstance(config, dict):
        raise PolicyError(f"policy {version}: {config_path} is not a JSON object")
    if not any((adapter / name).is_file() for name in WEIGHT_FILES):
        raise PolicyError(
            f"policy {version}: no adapter weights ({' or '.join(WEIGHT_FILES)}) in {adapter}"
        )
    return config
