"""reflect(): a LangGraph agent's final answer critiqued and refined before it returns."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langgraph.graph import END, START, MessagesState, StateGraph

from selfimprove.agents import CRITIC_NAME, reflect
from selfimprove.backends.scripted import ScriptedBackend
from selfimprove.constitution import load_constitution
from selfimprove.store import PreferenceStore
from selfimprove.traffic import TrafficLog, TrafficRecorder
from tests.test_critique_graph import CONSTITUTION, LONG, SHORT, make_ctx, prefer, responder

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def scripted_agent(answers: list[str], seen: list):
    """An agent graph answering with ``answers`` in turn (the last one repeats)."""

    def call(state: MessagesState) -> dict:
        seen.append(list(state["messages"]))
        text = answers[min(len(seen) - 1, len(answers) - 1)]
        return {"messages": [AIMessage(content=text, id=f"ai-{len(seen)}")]}

    g = StateGraph(MessagesState)
    g.add_node("call", call)
    g.add_edge(START, "call")
    g.add_edge("call", END)
    return g.compile()


@pytest.fixture
def ctx(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(CONSTITUTION)
    return make_ctx(load_constitution(path), ScriptedBackend(responder(SHORT), prefer(SHORT)),
                    max_rounds=1)


QUESTION = [SystemMessage("Be brief."), HumanMessage("Why is the sky blue?", id="h1")]


async def test_revise_replaces_the_final_answer_in_place(ctx):
    seen: list = []
    graph = reflect(scripted_agent([LONG], seen), ctx)
    state = await graph.ainvoke({"messages": QUESTION})
    *before, final = state["messages"]
    assert [m.content for m in before] == ["Be brief.", "Why is the sky blue?"]
    assert final.content == SHORT and final.id == "ai-1"  # replaced, not appended
    info = final.additional_kwargs["selfimprove"]
    assert info["first_response"] == LONG and info["passes_checks"] and info["rounds"] == 1


async def test_agent_mode_sends_the_critique_back_until_the_answer_passes(ctx):
    seen: list = []
    graph = reflect(scripted_agent([LONG, SHORT], seen), ctx, mode="agent")
    state = await graph.ainvoke({"messages": QUESTION})
    kinds = [(m.type, getattr(m, "name", None)) for m in state["messages"]]
    assert kinds == [("system", None), ("human", None), ("ai", None),
                     ("human", CRITIC_NAME), ("ai", None)]
    assert "max_5_words" in state["messages"][3].content  # the rule the answer broke
    assert state["messages"][-1].content == SHORT and len(seen) == 2
    info = state["messages"][-1].additional_kwargs["selfimprove"]
    assert info == {"rounds": 1, "passes_checks": True, "failed_checks": []}


async def test_agent_mode_is_bounded(ctx):
    seen: list = []
    graph = reflect(scripted_agent([LONG], seen), ctx, mode="agent", max_rounds=2)
    state = await graph.ainvoke({"messages": QUESTION})
    critiques = [m for m in state["messages"] if getattr(m, "name", None) == CRITIC_NAME]
    assert len(critiques) == 2 and len(seen) == 3
    assert state["messages"][-1].content == LONG  # still failing, but the bound holds
    info = state["messages"][-1].additional_kwargs["selfimprove"]  # and the caller is told so
    assert info["rounds"] == 2 and not info["passes_checks"] and "max_5_words" in (
        info["failed_checks"])


async def test_content_blocks_are_read_as_their_text(ctx):
    """Many chat models answer (and clients ask) in content blocks, not strings."""
    seen: list = []

    def call(state: MessagesState) -> dict:
        seen.append(list(state["messages"]))
        return {"messages": [AIMessage(content=[{"type": "text", "text": LONG}], id="ai-1")]}

    g = StateGraph(MessagesState)
    g.add_node("call", call)
    g.add_edge(START, "call")
    g.add_edge("call", END)
    asked = [HumanMessage("Plan a trip", id="h1"), AIMessage("Where to?", id="a0"),
             HumanMessage([{"type": "text", "text": "To Rome, briefly"}], id="h2")]
    shown: list = []
    revise = responder(SHORT)

    def respond(conv, params):
        shown.append(conv)
        return revise(conv, params)

    ctx = make_ctx(ctx.constitution, ScriptedBackend(respond, prefer(SHORT)), max_rounds=1)
    state = await reflect(g.compile(), ctx).ainvoke({"messages": asked})
    final = state["messages"][-1]
    assert final.content == SHORT and final.id == "ai-1"
    assert final.additional_kwargs["selfimprove"]["first_response"] == LONG
    # the critic and reviser were shown the last user turn, given in blocks, too
    assert shown and all("To Rome, briefly" in conv[-1].content for conv in shown)


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"ctx": None}, TypeError, "ctx must be a CritiqueContext"),
    ({"max_rounds": "2"}, ValueError, "max_rounds must be an integer of at least 1, got '2'"),
    ({"max_rounds": 0}, ValueError, "max_rounds must be an integer of at least 1, got 0"),
    ({"mode": "fix"}, ValueError, "mode must be 'revise' or 'agent'"),
])
def test_bad_arguments_are_named(ctx, kwargs, error, message):
    args = {"ctx": ctx} | kwargs
    with pytest.raises(error, match=message):
        reflect(scripted_agent([LONG], []), **args)


async def test_an_answer_pending_tool_calls_is_left_alone(ctx):
    def call(state: MessagesState) -> dict:
        return {"messages": [AIMessage(content="", tool_calls=[
            {"name": "search", "args": {"q": "sky"}, "id": "t1"}])]}

    g = StateGraph(MessagesState)
    g.add_node("call", call)
    g.add_edge(START, "call")
    g.add_edge("call", END)
    state = await reflect(g.compile(), ctx).ainvoke({"messages": QUESTION})
    assert state["messages"][-1].tool_calls and state["messages"][-1].content == ""


async def test_critiques_are_recorded_as_traffic(ctx, tmp_path):
    run = tmp_path / "run"
    with TrafficRecorder(run, flush_seconds=3600) as recorder:
        graph = reflect(scripted_agent([LONG], []), ctx, recorder=recorder)
        for q in ("How do tides work?", "Why do cats purr?", "What is rust?"):
            await graph.ainvoke({"messages": [HumanMessage(q)]})
    rows = TrafficLog(run).table().to_pylist()
    assert len(rows) == 3 and all(r["critiqued"] for r in rows)
    store = PreferenceStore(run)
    sources = set(store.pairs_dataset()["source"]) | set(store.sft_dataset()["source"])
    assert sources == {"traffic"}


def _example():
    spec = importlib.util.spec_from_file_location("reflect_agent", EXAMPLES / "reflect_agent.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
async def test_the_reflect_example_on_the_embedded_model(embedded_backend, tmp_path):
    """A real LangGraph agent on the embedded model, wrapped; its critique recorded."""
    from selfimprove.critique_loop import CritiqueContext, Roles
    from selfimprove.types import SamplingParams

    roles = Roles(policy=embedded_backend, policy_sampling=SamplingParams(max_new_tokens=160),
                  reviser_sampling=SamplingParams(max_new_tokens=64))
    # concise's 80-word rule; 160 tokens let the first answer break it
    ctx = CritiqueContext(constitution=load_constitution("concise"), roles=roles,
                          max_rounds=1, critic="checks")
    with TrafficRecorder(tmp_path / "run", flush_seconds=3600) as recorder:
        state = await _example().answer("Explain in detail how a car engine works.", ctx,
                                        recorder=recorder)
    # (mode "agent" runs the same nodes on scripted models above; on the real model it only
    # re-asks the agent, which costs a minute and tests nothing new)
    *_, final = state["messages"]
    assert isinstance(final, AIMessage) and final.content.strip()
    info = final.additional_kwargs["selfimprove"]
    assert info["first_response"].strip()
    # 160 tokens break concise's 80-word rule, so the answer was critiqued and revised
    assert len(info["first_response"].split()) > 80 and info["rounds"] == 1
    assert final.content != info["first_response"]
    assert TrafficLog(tmp_path / "run").table().num_rows == 1
