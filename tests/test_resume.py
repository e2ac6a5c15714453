"""Durable runs: SIGKILL at random moments, resume, and end exactly like an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


def status_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def test_a_failed_run_says_so_and_resumes_to_the_same_end(tmp_path):
    from selfimprove.runner import run
    from tests.scripted_cycle import fake_trainer, load_cfg, make_roles

    write_inputs(tmp_path)
    cfg = load_cfg(tmp_path / "run.yaml")
    reference = tmp_path / "reference"
    run(cfg, reference, roles=make_roles(), trainer=fake_trainer)
    assert status_of(reference)["status"] == "finished"

    def broken_trainer(*args, **kwargs):
        raise RuntimeError("the GPU fell off")

    run_dir = tmp_path / "failed"
    with pytest.raises(RuntimeError, match="fell off"):
        run(cfg, run_dir, roles=make_roles(), trainer=broken_trainer)
    status = status_of(run_dir)
    assert status["status"] == "failed" and "the GPU fell off" in status["detail"]
    state = run(None, run_dir, resume=True, roles=make_roles(), trainer=fake_trainer)
    assert len(state["records"]) == 3
    assert status_of(run_dir)["status"] == "finished"
    assert fingerprint(run_dir) == fingerprint(reference)


def test_sigterm_marks_the_run_interrupted_and_resume_finishes_it(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    write_inputs(work)
    reference = tmp_path / "reference"
    finish(work, reference)
    for attempt in range(5):
        run_dir = tmp_path / f"terminated-{attempt}"
        proc = start(work, run_dir)
        deadline = time.monotonic() + 120
        while not (run_dir / "cycles" / "cycle-0001.json").exists():  # mid-run: cycle 2 next
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        if status_of(run_dir)["status"] == "finished":
            continue  # it finished before the signal arrived: try again
        assert proc.returncode != 0
        status = status_of(run_dir)
        assert status["status"] == "interrupted", (status, err.decode()[-3000:])
        assert "--resume" in status["detail"]
        break
    else:
        pytest.fail("the run always finished before SIGTERM arrived")
    finish(work, run_dir)
    assert status_of(run_dir)["status"] == "finished"
    assert fingerprint(run_dir) == fingerprint(reference)


def _scripted_run(tmp_path: Path, resume: bool = False) -> Path:
    from selfimprove.runner import run
    from tests.scripted_cycle import fake_trainer, load_cfg, make_roles

    run_dir = tmp_path / "run"
    if resume:
        run(None, run_dir, resume=True, roles=make_roles(), trainer=fake_trainer)
    else:
        cfg_path = write_inputs(tmp_path)
        run(load_cfg(cfg_path), run_dir, config_path=cfg_path, roles=make_roles(),
            trainer=fake_trainer)
    return run_dir


def test_a_run_whose_checkpoints_are_lost_or_damaged_is_not_restarted(tmp_path):
    from selfimprove.rundir import RunDir, RunDirError

    run_dir = _scripted_run(tmp_path)
    checkpoints = RunDir(run_dir).checkpoints_path
    cycles = sorted(p.name for p in (run_dir / "cycles").iterdir())
    assert cycles
    checkpoints.write_bytes(b"not a database, " * 64)
    with pytest.raises(RunDirError, match="checkpoints.sqlite: unreadable checkpoint database"):
        _scripted_run(tmp_path, resume=True)
    checkpoints.unlink()
    with pytest.raises(RunDirError, match="missing or empty, but .* has finished cycles"):
        _scripted_run(tmp_path, resume=True)
    # cycle 1 did not start again over the run's records
    assert sorted(p.name for p in (run_dir / "cycles").iterdir()) == cycles
