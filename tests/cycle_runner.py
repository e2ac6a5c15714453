"""Run (or resume) the scripted improvement cycle in a subprocess, for the SIGKILL tests.

Usage: python tests/cycle_runner.py WORK_DIR RUN_DIR
Starts a new run when RUN_DIR holds none yet, else resumes it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from selfimprove.rundir import RunDir  # noqa: E402
from selfimprove.runner import run  # noqa: E402
from tests.scripted_cycle import fake_trainer, load_cfg, make_roles  # noqa: E402


def main() -> None:
    work, run_dir = Path(sys.argv[1]), Path(sys.argv[2])
    if RunDir(run_dir).holds_run():
        run(None, run_dir, resume=True, roles=make_roles(), trainer=fake_trainer)
    else:
        run(load_cfg(work / "run.yaml"), run_dir, roles=make_roles(), trainer=fake_trainer)


if __name__ == "__main__":
    main()
