"""The critique graph: generate → check → critique → refine → … → judge, one prompt per thread."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from selfimprove.critique_loop.check import check
from selfimprove.critique_loop.critic import critique
from selfimprove.critique_loop.generate import generate
from selfimprove.critique_loop.judge import judge
from selfimprove.critique_loop.refine import refine
from selfimprove.critique_loop.state import CritiqueContext, CritiqueInput, CritiqueState
from selfimprove.hashing import prompt_id
from selfimprove.sources import PromptRecord
from selfimprove.types import CritiqueResult, passes

MIN_ROUNDS = 1  # Constitutional AI always revises at least once, even with no failed check


def route_after_check(state: CritiqueState, runtime: Runtime[CritiqueContext]) -> str:
    """Critique again while checks fail (or before the first revision) and rounds remain."""
    done = state.get("round", 0)
    if done >= runtime.context.max_rounds:
        return "judge"
    clean = passes(state.get("checks", []))
    # With the checks as critic there is nothing to critique in an answer that passes them.
    settled = done >= MIN_ROUNDS or runtime.context.critic == "checks"
    return "judge" if clean and settled else "critique"


def build_critique_graph(checkpointer: Any = None):
    """Compile the critique graph. Invoke it with ``context=CritiqueContext(...)``."""
    g = StateGraph(CritiqueState, context_schema=CritiqueContext, input_schema=CritiqueInput)
    g.add_node("generate", generate)
    g.add_node("check", check)
    g.add_node("critique", critique)
    g.add_node("refine", refine)
    g.add_node("judge", judge)
    g.add_edge(START, "generate")
    g.add_edge("generate", "check")
    g.add_conditional_edges("check", route_after_check, ["critique", "judge"])
    g.add_edge("critique", "refine")
    g.add_edge("refine", "check")
    g.add_edge("judge", END)
    return g.compile(checkpointer=checkpointer, name="critique_loop")


_GRAPH = None


def critique_graph():
    """The compiled graph without a checkpointer, built once."""
    global _GRAPH
    if _GRAPH is None:
        _GRAPH = build_critique_graph()
    return _GRAPH


def to_result(state: CritiqueState, ctx: CritiqueContext) -> CritiqueResult:
    """Package a finished graph state as the value that harvest and callers consume."""
    return CritiqueResult(
        prompt_id=state["prompt_id"],
        prompt=state["prompt"],
        messages=state.get("conversation") or [],
        response_given=state.get("response_given", False),
        first_truncated=state.get("response_truncated", False),
        source=state.get("source") or "loop",
        prompt_checks=state.get("prompt_checks") or [],
        constitution=ctx.constitution.name,
        constitution_hash=ctx.constitution.content_hash,
        policy_version=ctx.policy_version,
        first_response=state["first_response"],
        final_response=state["response"],
        rounds=state.get("rounds", []),
        final_checks=state.get("checks", []),
        verdict=state.get("verdict"),
        samples=state.get("samples") or [],
        sample_scores=state.get("sample_scores") or [],
        sample_checks_passed=state.get("sample_checks_passed") or [],
        generated_tokens=state.get("generated_tokens", 0),
    )


#: what the plain calls accept as one prompt: its text, ``(id, text)``, a record with the
#: prompt's own checks, a conversation (a list of chat messages; a final assistant turn is the
#: answer to critique) or the graph's input dict itself
PromptLike = str | tuple[str, str] | PromptRecord | list[Any] | dict[str, Any]


def _input(item: PromptLike, response: str | None = None) -> CritiqueInput:
    out: CritiqueInput
    if isinstance(item, PromptRecord):
        out = {"prompt_id": item.id, "prompt_checks": item.checks_json()}
        if item.messages:
            out["messages"] = [m.model_dump() for m in item.messages]
        else:
            out["prompt"] = item.prompt
        if item.response is not None:
            out["response"] = item.response
            out["response_truncated"] = item.response_truncated
        if item.source != "loop":
            out["source"] = item.source
    elif isinstance(item, dict):
        out = CritiqueInput(**item)  # type: ignore[typeddict-item]
    elif isinstance(item, list):
        out = {"messages": item}
    elif isinstance(item, tuple):
        if len(item) != 2 or not all(isinstance(x, str) for x in item):
            raise TypeError("a prompt tuple is (id, text); pass a conversation as a list")
        out = {"prompt_id": item[0], "prompt": item[1]}
    elif isinstance(item, str):
        out = {"prompt_id": prompt_id(item), "prompt": item}
    else:
        raise TypeError("a prompt is a string, (id, text), a PromptRecord, a conversation (a "
                        f"list of messages) or the graph's input dict, got {type(item).__name__}")
    if response is not None:
        out["response"] = response
    return out


async def acritique(
    prompt: PromptLike, ctx: CritiqueContext, *, response: str | None = None
) -> CritiqueResult:
    """Run the critique loop on one prompt or conversation (the plain-call way to embed it).

    ``response``: the answer already given (an agent's); it is checked, critiqued and revised
    instead of a new one generated. A conversation ending with an assistant turn gives it too.
    """
    state = await critique_graph().ainvoke(_input(prompt, response), context=ctx)
    return to_result(state, ctx)


async def iter_critiques(
    prompts: Sequence[PromptLike], ctx: CritiqueContext, max_concurrency: int = 64
) -> AsyncIterator[tuple[int, CritiqueResult]]:
    """Run many prompts concurrently, yielding ``(index, result)`` as each finishes.

    Concurrency is what lets the backend batch model calls across prompts.
    """
    graph = critique_graph()
    limit = asyncio.Semaphore(max_concurrency)

    async def one(i: int, item: PromptLike) -> tuple[int, CritiqueResult]:
        async with limit:
            state = await graph.ainvoke(_input(item), context=ctx)
        return i, to_result(state, ctx)

    tasks = [asyncio.ensure_future(one(i, p)) for i, p in enumerate(prompts)]
    try:
        for fut in asyncio.as_completed(tasks):
            yield await fut
    finally:
        for t in tasks:
            t.cancel()


async def critique_many(
    prompts: Sequence[PromptLike], ctx: CritiqueContext, max_concurrency: int = 64
) -> list[CritiqueResult]:
    """Run many prompts concurrently; results in input order."""
    out: list[CritiqueResult | None] = [None] * len(prompts)
    async for i, result in iter_critiques(prompts, ctx, max_concurrency):
        out[i] = result
    return [r for r in out if r is not None]
