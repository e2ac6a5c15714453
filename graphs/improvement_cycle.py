"""The improvement cycle for LangGraph Server (``langgraph.json``).

Its context names the run: ``{"run_dir": "runs/x", "config": {...RunConfig...}}`` starts one,
``{"run_dir": "runs/x"}`` continues it. The run keeps its own SQLite checkpoints in the run
directory, as ``selfimprove run`` does; the graph returns the run's cycle records and current
version. To embed the cycle's nodes, use :func:`selfimprove.build_cycle_graph`.
"""

from selfimprove.server_graphs import cycle_server_graph

graph = cycle_server_graph()
