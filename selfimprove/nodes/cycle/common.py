"""Helpers shared by the cycle nodes: atomic JSON files in the run directory, timing."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file, fsync, rename), so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
