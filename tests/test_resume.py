"""Durable runs: SIGKILL at random moments, resume, and end exactly like an uninterrupted run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from selfimprove.registry import PolicyRegistry
from selfimprove.store import PreferenceStore
from tests.scripted_cycle import write_inputs

RUNNER = Path(__file__).with_name("cycle_runner.py")
REPO = Path(__file__).resolve().parent.parent


def start(work: Path, run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(RUNNER), str(work), str(run_dir)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def finish(work: Path, run_dir: Path) -> None:
    proc = start(work, run_dir)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-3000:]


def fingerprint(run_dir: Path) -> dict:
    store = PreferenceStore(run_dir, readonly=True)
    reg = PolicyRegistry(run_dir)
    return {
        "pair_hashes": sorted(store.row_hashes("pairs")),
        "sft_hashes": sorted(store.row_hashes("sft")),
        "pairs": len(store.pairs_dataset()),
        "shards": sorted(s.name + s.kind for s in store.shards()),
        "versions": [(r.version, r.parent, r.status, r.method) for r in reg.versions()],
        "current": reg.current_version(),
        "cycles": sorted(p.name for p in (run_dir / "cycles").glob("cycle-*.json")),
    }


def test_sigkill_at_random_moments_then_resume_matches_uninterrupted(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    write_inputs(work)
    reference = tmp_path / "reference"
    t0 = time.perf_counter()
    finish(work, reference)
    full = time.perf_counter() - t0
    expected = fingerprint(reference)
    assert expected["current"] == "v1" and len(expected["versions"]) == 4

    run_dir = tmp_path / "killed"
    rng = random.Random(1234)
    kills = 0
    attempts = 0
    while kills < 10 and attempts < 40:
        attempts += 1
        proc = start(work, run_dir)
        delay = rng.uniform(0.3, max(0.6, full * 0.8))
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        # it finished before the kill: start over in a new directory to keep killing
        assert proc.returncode == 0, proc.stderr.read().decode()[-3000:]
        assert fingerprint(run_dir) == expected
        run_dir = tmp_path / f"killed-{attempts}"
    assert kills >= 10
    finish(work, run_dir)
    assert fingerprint(run_dir) == expected
    # training never ran twice for a cycle: one committed version per trained cycle
    assert [v[0] for v in fingerprint(run_dir)["versions"]] == ["v0", "v1", "v2", "v3"]
