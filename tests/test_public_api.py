"""The package's public names resolve, and importing the package stays light."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import selfimprove


def test_every_public_name_resolves():
    for name in selfimprove.__all__:
        assert getattr(selfimprove, name) is not None, name


def test_import_does_not_load_torch():
    code = "import sys, selfimprove; print('torch' in sys.modules, 'langgraph' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# Every concept has one home; the package re-exports it from there.
HOMES = {
    "Roles": "selfimprove.roles",
    "CritiqueContext": "selfimprove.critique_loop.state",
    "build_critique_graph": "selfimprove.critique_loop.graph",
    "build_cycle_graph": "selfimprove.improvement_cycle.graph",
    "make_context": "selfimprove.wiring",
    "run": "selfimprove.runner",
    "RunConfig": "selfimprove.config",
    "PolicyRegistry": "selfimprove.registry",
    "PreferenceStore": "selfimprove.store",
    "reflect": "selfimprove.agents",
    "TrafficRecorder": "selfimprove.traffic",
}


@pytest.mark.parametrize("name", sorted(HOMES))
def test_public_names_come_from_their_home(name):
    home = importlib.import_module(HOMES[name])
    assert getattr(selfimprove, name) is getattr(home, name)
    assert getattr(home, name).__module__ == HOMES[name]


@pytest.mark.parametrize(
    "old",
    ["selfimprove.graph", "selfimprove.nodes", "selfimprove.cycle", "selfimprove.evaluate",
     "selfimprove.training.run"],
)
def test_old_module_paths_are_gone(old):
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old)


def test_moved_names_live_in_one_place():
    from selfimprove import config, evaluation, gate, report, rundir

    assert not hasattr(gate, "GateConfig") or gate.GateConfig is config.GateConfig
    assert gate.PolicyEval is evaluation.PolicyEval
    assert report.CycleRecord is rundir.CycleRecord
    assert "CycleRecord" not in report.__all__ and "GateConfig" not in gate.__all__
    assert not hasattr(report, "load_cycles") and not hasattr(report, "load_baseline")


def test_config_is_data_only():
    code = (
        "import sys, selfimprove.config; "
        "mods = [m for m in sys.modules if m.startswith(('torch', 'transformers', 'langgraph', "
        "'selfimprove.backends', 'selfimprove.judges', 'selfimprove.critique_loop'))]; "
        "print(mods)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
