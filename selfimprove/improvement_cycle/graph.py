"""The improvement-cycle graph: sample → critique → harvest → train → gate → promote."""

from __future__ import annotations

from typing import Any

from langgraph.graph import END, START, StateGraph

from selfimprove.improvement_cycle.baseline import baseline
from selfimprove.improvement_cycle.critique_prompts import critique_prompts
from selfimprove.improvement_cycle.gate_candidate import gate_candidate
from selfimprove.improvement_cycle.harvest import harvest, route_after_harvest
from selfimprove.improvement_cycle.promote import promote_or_reject
from selfimprove.improvement_cycle.record import record, route_after_record
from selfimprove.improvement_cycle.sample import sample
from selfimprove.improvement_cycle.state import CycleContext, CycleState
from selfimprove.improvement_cycle.train import route_after_train, train


def build_cycle_graph(checkpointer: Any = None):
    """Compile the cycle graph; invoke it with ``context=CycleContext(...)``."""
    g = StateGraph(CycleState, context_schema=CycleContext)
    g.add_node("baseline", baseline)
    g.add_node("sample", sample)
    g.add_node("critique", critique_prompts)
    g.add_node("harvest", harvest)
    g.add_node("train", train)
    g.add_node("gate", gate_candidate)
    g.add_node("promote", promote_or_reject)
    g.add_node("record", record)
    g.add_edge(START, "baseline")
    g.add_edge("baseline", "sample")
    g.add_edge("sample", "critique")
    g.add_edge("critique", "harvest")
    g.add_conditional_edges("harvest", route_after_harvest, ["train", "record"])
    g.add_conditional_edges("train", route_after_train, ["gate", "record"])
    g.add_edge("gate", "promote")
    g.add_edge("promote", "record")
    g.add_conditional_edges("record", route_after_record, ["sample", END])
    return g.compile(checkpointer=checkpointer, name="improvement_cycle")
