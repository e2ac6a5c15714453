"""The improvement-cycle graph: sample → critique → harvest → train → evaluate → decide."""

from __future__ import annotations

from typing import Any

from langgraph.graph import END, START, StateGraph

from selfimprove.graph.cycle_state import CycleContext, CycleState
from selfimprove.nodes.cycle.baseline import baseline
from selfimprove.nodes.cycle.critique_batch import critique_batch
from selfimprove.nodes.cycle.decide import decide
from selfimprove.nodes.cycle.evaluate import evaluate
from selfimprove.nodes.cycle.harvest import harvest, route_after_harvest
from selfimprove.nodes.cycle.record import record, route_after_record
from selfimprove.nodes.cycle.sample import sample
from selfimprove.nodes.cycle.train import route_after_train, train


def build_cycle_graph(checkpointer: Any = None):
    """Compile the cycle graph; invoke it with ``context=CycleContext(...)``."""
    g = StateGraph(CycleState, context_schema=CycleContext)
    g.add_node("baseline", baseline)
    g.add_node("sample", sample)
    g.add_node("critique", critique_batch)
    g.add_node("harvest", harvest)
    g.add_node("train", train)
    g.add_node("evaluate", evaluate)
    g.add_node("decide", decide)
    g.add_node("record", record)
    g.add_edge(START, "baseline")
    g.add_edge("baseline", "sample")
    g.add_edge("sample", "critique")
    g.add_edge("critique", "harvest")
    g.add_conditional_edges("harvest", route_after_harvest, ["train", "record"])
    g.add_conditional_edges("train", route_after_train, ["evaluate", "record"])
    g.add_edge("evaluate", "decide")
    g.add_edge("decide", "record")
    g.add_conditional_edges("record", route_after_record, ["sample", END])
    return g.compile(checkpointer=checkpointer, name="improvement_cycle")
