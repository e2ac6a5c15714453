"""The improvement cycle: sample prompts → critique → harvest → train → gate → promote.

One node per file; :mod:`.graph` wires them, :mod:`.state` holds the state and context, and
:mod:`selfimprove.runner` runs the graph durably in a run directory.
"""

from selfimprove.improvement_cycle.graph import build_cycle_graph
from selfimprove.improvement_cycle.state import CycleContext, CycleState

__all__ = ["CycleContext", "CycleState", "build_cycle_graph"]
