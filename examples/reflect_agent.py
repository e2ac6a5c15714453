"""Wrap a LangGraph agent so its final answer is checked, critiqued and revised against a
constitution before it returns, and record what it did for the next training cycle.

The agent here is a plain LangGraph graph over ``MessagesState`` whose one node asks the
model; yours can be any compiled graph with ``messages`` (tools, several nodes, a ReAct
agent). Run it on the embedded model:

    python examples/reflect_agent.py "How do I get better sleep?"
    python examples/reflect_agent.py --mode agent --record runs/agent "Why is the sea salty?"

``--mode agent`` sends the critique back to the agent instead of revising for it;
``--record RUN_DIR`` records each critique into that run's store (``selfimprove run`` trains
on it).
"""

from __future__ import annotations

import argparse
import asyncio

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langgraph.graph import END, START, MessagesState, StateGraph

from selfimprove.agents import reflect
from selfimprove.backends.base import Backend
from selfimprove.config import CritiqueConfig
from selfimprove.conversation import as_messages
from selfimprove.critique_loop import CritiqueContext
from selfimprove.traffic import TrafficRecorder
from selfimprove.types import SamplingParams
from selfimprove.wiring import make_context


def build_agent(model: Backend, sampling: SamplingParams):
    """A minimal agent: one node that answers the conversation with ``model``."""

    async def call_model(state: MessagesState) -> dict:
        conv = as_messages(state["messages"])
        ((out,),) = await model.generate([conv], sampling)
        return {"messages": [AIMessage(content=out.text)]}

    g = StateGraph(MessagesState)
    g.add_node("model", call_model)
    g.add_edge(START, "model")
    g.add_edge("model", END)
    return g.compile()


async def answer(question: str, ctx: CritiqueContext, *, mode: str = "revise",
                 recorder: TrafficRecorder | None = None) -> dict:
    agent = build_agent(ctx.roles.policy, ctx.roles.policy_sampling)
    graph = reflect(agent, ctx, mode=mode, recorder=recorder)  # type: ignore[arg-type]
    messages = [SystemMessage("You are a helpful assistant."), HumanMessage(question)]
    return await graph.ainvoke({"messages": messages})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("question", nargs="?", default="How do I get better sleep?")
    parser.add_argument("--mode", choices=["revise", "agent"], default="revise")
    parser.add_argument("--record", metavar="RUN_DIR", help="record critiques into this run")
    args = parser.parse_args()
    ctx = make_context(CritiqueConfig(constitution="concise", critic="checks", max_rounds=1))
    recorder = TrafficRecorder(args.record) if args.record else None

    async def run() -> dict:
        try:
            return await answer(args.question, ctx, mode=args.mode, recorder=recorder)
        finally:
            await ctx.roles.aclose()
            if recorder is not None:
                recorder.close()

    state = asyncio.run(run())
    for message in state["messages"]:
        print(f"[{message.type}] {message.content}\n")
    info = state["messages"][-1].additional_kwargs.get("selfimprove")
    if info:
        print("first answer:", info["first_response"])


if __name__ == "__main__":
    main()
