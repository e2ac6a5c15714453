"""Wrap an agent: critique and refine its final answer against a constitution before it
returns (checks, critique, revision, judge), with a bound on rounds.

The agent is any compiled LangGraph graph whose state holds ``messages`` (LangChain messages
under the ``add_messages`` reducer, as ``MessagesState`` and ``create_react_agent`` have)::

    from selfimprove.agents import reflect
    graph = reflect(agent, ctx)              # our reviser rewrites the final answer
    graph = reflect(agent, ctx, mode="agent")  # the critique goes back to the agent

- ``mode="revise"``: the critique graph runs on the conversation with the agent's final
  answer as the response (up to ``ctx.max_rounds`` critique/revision rounds); the revision
  replaces the final AI message in place (same message id).
- ``mode="agent"``: the checks (and critic) judge the final answer; while it fails a hard
  check and fewer than ``max_rounds`` critiques were sent, the critique goes back to the
  agent as a user message and the agent answers again, with its own tools and prompt; the
  answer it ends with carries the outcome under ``additional_kwargs["selfimprove"]`` too.

With a ``recorder`` (:class:`~selfimprove.traffic.TrafficRecorder`) every critique is
recorded into a run's store as agent traffic.
"""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.runtime import Runtime

from selfimprove.checks import run_checks
from selfimprove.conversation import as_messages, transcript
from selfimprove.critique_loop.critic import critique as critique_node
from selfimprove.critique_loop.graph import acritique
from selfimprove.critique_loop.state import CritiqueContext, CritiqueState
from selfimprove.critique_loop.text import failed_checks_text
from selfimprove.hashing import prompt_id
from selfimprove.traffic import TrafficRecorder
from selfimprove.types import passes

__all__ = ["CRITIC_NAME", "reflect"]

#: the ``name`` of the user messages that carry critiques back to the agent (mode "agent")
CRITIC_NAME = "selfimprove_critic"


def _answer(messages: list[AnyMessage]) -> AIMessage | None:
    """The agent's final answer: a last AI message with text and no pending tool calls.

    Its text is ``.text``: a string content, or the text blocks of a list of content blocks
    (as many chat models return them)."""
    last = messages[-1] if messages else None
    if not isinstance(last, AIMessage) or last.tool_calls or not last.text.strip():
        return None
    return last


def _conversation(messages: list[AnyMessage]) -> list[dict[str, str]]:
    """What the user and agent said, as text, without tool traffic (intermediate steps)."""
    out = []
    for m in messages:
        if not m.text.strip():
            continue  # tool-call turns, images alone
        if m.type in ("system", "human"):
            out.append({"role": "system" if m.type == "system" else "user", "content": m.text})
        elif isinstance(m, AIMessage) and not m.tool_calls:
            out.append({"role": "assistant", "content": m.text})
    return out


def _annotated(answer: AIMessage, info: dict[str, Any], content: str | None = None) -> AIMessage:
    """``answer`` (same id, so it replaces it) with the outcome under
    ``additional_kwargs["selfimprove"]``."""
    return AIMessage(content=answer.content if content is None else content, id=answer.id,
                     additional_kwargs={**answer.additional_kwargs, "selfimprove": info})


def reflect(
    agent: Any,
    ctx: CritiqueContext,
    *,
    mode: Literal["revise", "agent"] = "revise",
    max_rounds: int = 2,
    recorder: TrafficRecorder | None = None,
    state_schema: type = MessagesState,
):
    """A compiled graph that runs ``agent`` and then critiques and refines its answer.

    ``state_schema`` is the outer graph's state (default ``MessagesState``; pass the agent's
    own schema to carry its other keys through). ``max_rounds`` bounds the critiques sent back
    in mode ``agent``; in mode ``revise`` the context's ``max_rounds`` bounds the revisions.
    """
    if not isinstance(ctx, CritiqueContext):
        raise TypeError("ctx must be a CritiqueContext (selfimprove.make_context(CritiqueConfig("
                        f"...))), got {type(ctx).__name__}")
    if mode not in ("revise", "agent"):
        raise ValueError(f"mode must be 'revise' or 'agent', got {mode!r}")
    if not isinstance(max_rounds, int) or isinstance(max_rounds, bool) or max_rounds < 1:
        raise ValueError(f"max_rounds must be an integer of at least 1, got {max_rounds!r}")

    async def record(result) -> None:
        if recorder is not None:
            await recorder.arecord_critique(result.model_copy(update={"source": "traffic"}))

    async def revise(state: dict[str, Any]) -> dict[str, Any]:
        answer = _answer(state["messages"])
        if answer is None:
            return {}  # nothing to critique: the agent ended on a tool call or no text
        conv = _conversation(state["messages"][:-1])
        result = await acritique(conv, ctx, response=answer.text)
        await record(result)
        info = {"first_response": answer.text, "rounds": len(result.rounds),
                "passes_checks": result.final_passes,
                "failed_checks": [c.check_id for c in result.final_checks if not c.passed]}
        return {"messages": [_annotated(answer, info, result.final_response)]}

    async def critique_answer(state: dict[str, Any]) -> dict[str, Any]:
        answer = _answer(state["messages"])
        sent = sum(1 for m in state["messages"] if getattr(m, "name", None) == CRITIC_NAME)
        if answer is None:
            return {}
        checks = run_checks(ctx.checks_for({}), answer.text)
        if passes(checks) or sent >= max_rounds:
            # The outcome on the answer the caller gets, as mode "revise" gives it.
            info = {"rounds": sent, "passes_checks": passes(checks),
                    "failed_checks": [c.check_id for c in checks if not c.passed]}
            return {"messages": [_annotated(answer, info)]}
        prompt = transcript(as_messages(_conversation(state["messages"][:-1])))
        loop_state: CritiqueState = {"prompt": prompt, "prompt_id": prompt_id(prompt),
                                     "response": answer.text, "checks": checks,
                                     "round": sent}
        crit = (await critique_node(loop_state, Runtime(context=ctx)))["critique"]
        assert crit is not None
        # The failed rules are named even when a critic model wrote the critique.
        rules = "" if ctx.critic == "checks" else failed_checks_text(checks)
        text = (crit.text.strip() + "\n" + rules.strip()).strip()
        feedback = (f"Your answer needs another pass.\n{text}\n"
                    "Answer my last request again, fixing exactly these problems.")
        return {"messages": [HumanMessage(content=feedback, name=CRITIC_NAME)]}

    def route(state: dict[str, Any]) -> str:
        last = state["messages"][-1] if state["messages"] else None
        return "agent" if getattr(last, "name", None) == CRITIC_NAME else END

    g = StateGraph(state_schema)
    g.add_node("agent", agent)
    g.add_edge(START, "agent")
    if mode == "revise":
        g.add_node("reflect", revise)
        g.add_edge("agent", "reflect")
        g.add_edge("reflect", END)
    else:
        g.add_node("reflect", critique_answer)
        g.add_edge("agent", "reflect")
        g.add_conditional_edges("reflect", route, ["agent", END])
    return g.compile(name="reflect")
