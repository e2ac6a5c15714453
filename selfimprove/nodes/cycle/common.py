"""Helpers shared by the cycle nodes: atomic JSON files in the run directory, timing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selfimprove.atomic import write_json

__all__ = ["cycle_path", "eval_path", "read_json", "timed", "write_json"]


def read_json(path: Path) -> Any | None:
    return json.loads(path.read_text("utf-8")) if path.is_file() else None


def eval_path(run_dir: Path, version: str) -> Path:
    return run_dir / "evals" / f"{version}.json"


def cycle_path(run_dir: Path, cycle: int) -> Path:
    return run_dir / "cycles" / f"cycle-{cycle + 1:04d}.json"


@contextmanager
def timed(into: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        into[stage] = into.get(stage, 0.0) + time.perf_counter() - start
