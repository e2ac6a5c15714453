"""The improvement cycle as a compiled LangGraph graph.

Runs are started with ``selfimprove run`` (:func:`selfimprove.runner.run`), which adds the
SQLite checkpointer in the run directory and the :class:`~selfimprove.improvement_cycle.state.
CycleContext`; this module exposes the bare graph for inspection and embedding.
"""

from selfimprove.improvement_cycle.graph import build_cycle_graph

graph = build_cycle_graph()
