"""Conversations and given responses in the critique loop: an agent's answer is critiqued."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langgraph.graph import START, MessagesState, StateGraph

from selfimprove.backends.scripted import ScriptedBackend
from selfimprove.config import HarvestConfig
from selfimprove.constitution import load_constitution
from selfimprove.conversation import ConversationError, as_messages, transcript
from selfimprove.critique_loop import acritique, build_critique_graph, critique_many
from selfimprove.errors import ConfigError
from selfimprove.harvest import harvest
from selfimprove.sources import PromptRecord, load_prompt_records
from selfimprove.store import PreferenceStore
from selfimprove.types import Message
from tests.test_critique_graph import CONSTITUTION, LONG, SHORT, make_ctx, prefer, user_text

CONVERSATION = [
    {"role": "system", "content": "You are a terse travel agent."},
    {"role": "user", "content": "I want to visit Lisbon."},
    {"role": "assistant", "content": "Great choice. When?"},
    {"role": "user", "content": "In May. What should I pack?"},
]


def recording_responder(seen: list):
    """Answers like the tiny constitution's scripted responder, recording each conversation."""

    def respond(conv, params):
        seen.append(conv)
        text = user_text(conv)
        if "Critique request" in text:
            return "It is too long."
        if "Revision request" in text:
            return SHORT
        return LONG

    return respond


@pytest.fixture
def constitution(tmp_path: Path):
    path = tmp_path / "tiny.yaml"
    path.write_text(CONSTITUTION)
    return load_constitution(path)


async def test_a_given_response_is_critiqued_without_generating(constitution):
    seen: list = []
    backend = ScriptedBackend(recording_responder(seen), prefer(SHORT))
    given = "pack light clothes, a rain jacket and comfortable shoes for walking"
    result = await acritique(CONVERSATION, make_ctx(constitution, backend), response=given)
    assert result.response_given and result.first_response == given
    assert result.final_response == SHORT
    # No call answered the conversation itself: the first call is the critique request.
    assert all(conv[-1].content != CONVERSATION[-1]["content"] for conv in seen)
    critique_request = next(user_text(c) for c in seen if "Critique request" in user_text(c))
    assert "System: You are a terse travel agent." in critique_request
    assert "Assistant: Great choice. When?" in critique_request
    assert given in critique_request
    assert [m.model_dump() for m in result.messages] == CONVERSATION


async def test_a_final_assistant_turn_is_the_answer_to_critique(constitution):
    backend = ScriptedBackend(recording_responder([]), prefer(SHORT))
    agent_said = [*CONVERSATION, {"role": "assistant", "content": LONG + " truly"}]
    result = await acritique(agent_said, make_ctx(constitution, backend))
    assert result.response_given and result.first_response == LONG + " truly"
    assert len(result.messages) == len(CONVERSATION)


async def test_without_a_response_the_policy_answers_the_whole_conversation(constitution):
    seen: list = []
    backend = ScriptedBackend(recording_responder(seen), prefer(SHORT))
    result = await acritique(CONVERSATION, make_ctx(constitution, backend))
    assert not result.response_given and result.first_response == LONG
    assert [m.model_dump() for m in seen[0]] == CONVERSATION
    assert result.prompt == transcript(as_messages(CONVERSATION))


async def test_a_plain_prompt_is_one_user_turn_as_before(constitution):
    seen: list = []
    backend = ScriptedBackend(recording_responder(seen), prefer(SHORT))
    result = await acritique("Why?", make_ctx(constitution, backend))
    assert [m.model_dump() for m in seen[0]] == [{"role": "user", "content": "Why?"}]
    assert result.prompt == "Why?" and result.messages == [Message(role="user", content="Why?")]


async def test_langchain_messages_are_accepted(constitution):
    backend = ScriptedBackend(recording_responder([]), prefer(SHORT))
    msgs = [SystemMessage("Be brief."), HumanMessage("Why is the sky blue?"),
            AIMessage(LONG)]
    result = await acritique(msgs, make_ctx(constitution, backend))
    assert result.first_response == LONG
    assert [m.role for m in result.messages] == ["system", "user"]


async def test_stored_rows_keep_the_whole_conversation_as_the_prompt(constitution, tmp_path):
    backend = ScriptedBackend(recording_responder([]), prefer(SHORT))
    results = await critique_many(
        [CONVERSATION, [{"role": "user", "content": "Plain question?"}]],
        make_ctx(constitution, backend))
    out = harvest(results, HarvestConfig())
    conv_pair = next(r for r in out.pairs if len(r["prompt"]) > 1)
    assert conv_pair["prompt"] == CONVERSATION and conv_pair["source"] == "loop"
    conv_sft = next(r for r in out.sft if len(r["messages"]) > 2)
    assert conv_sft["messages"][:-1] == CONVERSATION
    # The store's held-out rule hashes the same text the prompt records carry.
    store = PreferenceStore(tmp_path, heldout_fraction=0.01)
    record = PromptRecord.conversation(CONVERSATION)
    assert store.is_heldout(record.prompt) is False
    store.append(out.pairs, out.sft, "s0")
    assert store.pairs_dataset()["source"] == ["loop"] * len(out.pairs)


async def test_the_subgraph_leaves_an_agents_messages_alone(constitution):
    """Embedded as a node of a MessagesState graph, the critique graph reads the agent's
    conversation and writes nothing back into it."""
    backend = ScriptedBackend(recording_responder([]), prefer(SHORT))

    class AgentState(MessagesState, total=False):
        response: str
        first_response: str

    g = StateGraph(AgentState)
    g.add_node("critique_loop", build_critique_graph())
    g.add_edge(START, "critique_loop")
    agent = g.compile()
    msgs = [HumanMessage("Why is the sky blue?", id="u1"), AIMessage(LONG, id="a1")]
    state = await agent.ainvoke({"messages": msgs}, context=make_ctx(constitution, backend))
    assert [m.id for m in state["messages"]] == ["u1", "a1"]
    assert state["first_response"] == LONG and state["response"] == SHORT


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ([], "messages: the conversation has no messages"),
        ("hello", "messages: a conversation is a list of messages, not a string"),
        ([{"role": "system", "content": "x"}], "messages: the conversation has no user message"),
        ([{"role": "robot", "content": "x"}], "messages[0].role: must be one of system, user, "
                                              "assistant, got 'robot'"),
        ([{"role": "user"}], "messages[0]: needs a 'content'"),
        ([{"role": "user", "content": 3}], "messages[0].content: must be a string"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}],
         "messages[1].role: a system message must come before"),
        ([42], "messages[0]: a message is a dict with 'role' and 'content', got int"),
    ],
)
def test_malformed_conversations_are_located_errors(messages, error):
    with pytest.raises(ConversationError) as exc:
        as_messages(messages)
    assert str(exc.value).startswith(error)


async def test_a_graph_input_without_prompt_or_messages_is_an_error(constitution):
    backend = ScriptedBackend(recording_responder([]), prefer(SHORT))
    with pytest.raises(ConversationError, match="needs a non-blank 'prompt' or 'messages'"):
        await build_critique_graph().ainvoke({"response": "x"},
                                             context=make_ctx(constitution, backend))


def test_prompt_files_may_hold_conversations(tmp_path):
    path = tmp_path / "agents.jsonl"
    path.write_text(
        json.dumps({"messages": CONVERSATION, "checks": [{"kind": "lowercase"}]}) + "\n"
        + json.dumps({"id": "said", "messages": [*CONVERSATION,
                                                   {"role": "assistant", "content": "Shorts."}]})
        + "\n"
    )
    first, second = load_prompt_records(path)
    assert first.messages == tuple(as_messages(CONVERSATION)) and first.response is None
    assert first.prompt.startswith("System: You are a terse travel agent.")
    assert [c.kind for c in first.checks] == ["lowercase"]
    assert second.id == "said" and second.response == "Shorts."


@pytest.mark.parametrize(
    ("line", "where"),
    [
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]},
         "field 'messages[1].role'"),
        ({"messages": []}, "field 'messages'"),
        ({"messages": [{"role": "user", "content": "hi"}], "checks": [{"kind": "nope"}]},
         "field 'checks[0].kind'"),
    ],
)
def test_bad_conversation_lines_name_file_line_and_field(tmp_path, line, where):
    path = tmp_path / "agents.jsonl"
    path.write_text(json.dumps({"prompt": "fine"}) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(ConfigError) as exc:
        load_prompt_records(path)
    assert str(exc.value).startswith(f"{path}:2: {where}")
