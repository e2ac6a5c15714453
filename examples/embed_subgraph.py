"""Embed the critique loop in your own LangGraph agent, as a subgraph node.

The agent drafts an answer with its own step, then hands the prompt to the critique subgraph,
which returns the critiqued, revised and judged response. Run it on the embedded model:

    python examples/embed_subgraph.py "How do I get better sleep?"
"""

from __future__ import annotations

import asyncio
import sys
from typing import TypedDict

from langgraph.graph import END, START, StateGraph

from selfimprove.config import CritiqueConfig
from selfimprove.critique_loop import CritiqueContext, build_critique_graph
from selfimprove.hashing import prompt_id
from selfimprove.wiring import make_context


class AgentState(TypedDict, total=False):
    question: str
    prompt_id: str
    prompt: str
    response: str  # filled in by the critique subgraph (its final revision)
    first_response: str
    rounds: list  # each round's checks, critique and revision, for the agent to inspect
    verdict: object  # the judge's first-response-vs-revision verdict


def prepare(state: AgentState) -> AgentState:
    """The agent's own step: here, turn the user's question into the prompt to answer."""
    question = state["question"].strip()
    return {"prompt": question, "prompt_id": prompt_id(question)}


def build_agent():
    # The compiled critique graph is used as a node; keys it shares with the agent's state
    # (prompt, prompt_id, response, first_response, rounds, verdict) flow in and out.
    g = StateGraph(AgentState, context_schema=CritiqueContext)
    g.add_node("prepare", prepare)
    g.add_node("critique_loop", build_critique_graph())
    g.add_edge(START, "prepare")
    g.add_edge("prepare", "critique_loop")
    g.add_edge("critique_loop", END)
    return g.compile()


async def answer(question: str, ctx: CritiqueContext) -> AgentState:
    return await build_agent().ainvoke({"question": question}, context=ctx)


def main() -> None:
    question = sys.argv[1] if len(sys.argv) > 1 else "How do I get better sleep?"
    ctx = make_context(CritiqueConfig(constitution="concise", max_rounds=1))

    async def answer_and_close() -> AgentState:
        try:
            return await answer(question, ctx)
        finally:
            await ctx.roles.aclose()  # the backends make_context loaded

    state = asyncio.run(answer_and_close())
    print("first answer:\n", state["first_response"], "\n")
    print("after critique and revision:\n", state["response"])


if __name__ == "__main__":
    main()
