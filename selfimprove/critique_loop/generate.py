"""generate: the policy's first response (and, for best-of-N, extra samples).

Given a conversation, the response answers its last user turn; given a response (an agent's
answer), that response is the first one and the policy is not asked for another. Extra samples
are drawn with the constitution's examples (if any) as earlier turns: demonstrations raise how
often a small policy follows a prompt's instructions, and what is kept is stored against the
bare conversation, so training distils the demonstrations' effect into the policy.
"""

from __future__ import annotations

from collections.abc import Sequence

from langgraph.runtime import Runtime

from selfimprove.constitution import Example
from selfimprove.conversation import ConversationError, as_messages, split_answer, transcript
from selfimprove.critique_loop.state import CritiqueContext, CritiqueState
from selfimprove.critique_loop.text import prompt_seed
from selfimprove.errors import PromptTooLongError
from selfimprove.hashing import prompt_id
from selfimprove.types import Message


def conversation_of(state: CritiqueState) -> tuple[list[Message], str | None]:
    """The conversation to answer and the answer given with it (None: generate one)."""
    given = state.get("response")
    if given is not None and not isinstance(given, str):
        raise ConversationError(f"response: the answer given must be a string, got "
                                f"{type(given).__name__}")
    if state.get("messages"):
        conv, answer = split_answer(as_messages(state["messages"]))
        return conv, given if given is not None else answer
    prompt = state.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ConversationError(f"prompt: must be a string, got {type(prompt).__name__}")
    if not prompt or not prompt.strip():
        raise ConversationError("the critique graph needs a non-blank 'prompt' or 'messages'")
    return [Message(role="user", content=prompt)], given


def with_examples(conv: list[Message], examples: Sequence[Example]) -> list[Message]:
    """``conv`` with the demonstrations as earlier turns, after any leading system messages."""
    if not examples:
        return conv
    head = 0
    while head < len(conv) and conv[head].role == "system":
        head += 1
    demos = [Message(role=role, content=text) for e in examples
             for role, text in (("user", e.prompt), ("assistant", e.response))]
    return [*conv[:head], *demos, *conv[head:]]


async def generate(state: CritiqueState, runtime: Runtime[CritiqueContext]) -> CritiqueState:
    ctx = runtime.context
    if not isinstance(ctx, CritiqueContext):
        raise TypeError("the critique graph runs with a CritiqueContext: graph.ainvoke(input, "
                        "context=make_context(CritiqueConfig(...))), got "
                        f"{type(ctx).__name__}")
    conv, given = conversation_of(state)
    prompt = transcript(conv) if state.get("messages") else state["prompt"]
    pid = state.get("prompt_id") or prompt_id(prompt)
    update: CritiqueState = {
        "prompt": prompt,
        "prompt_id": pid,
        "conversation": [m.model_dump() for m in conv],
        "response_given": given is not None,
        "round": 0,
    }
    if given is None:
        ((first,),) = await ctx.roles.policy.generate([conv], ctx.roles.policy_sampling)
        given = first.text
        update["generated_tokens"] = first.num_tokens
        update["response_truncated"] = first.finish_reason == "length"
    update["first_response"] = update["response"] = given
    if ctx.num_samples:
        params = ctx.roles.sample_sampling.model_copy(
            update={"n": ctx.num_samples, "seed": prompt_seed(ctx.seed, pid)}
        )
        shown = with_examples(conv, ctx.constitution.examples) if ctx.sample_with_examples else conv
        try:
            (samples,) = await ctx.roles.policy.generate([shown], params)
        except PromptTooLongError:
            if shown is conv:
                raise
            # The demonstrations do not fit next to this conversation: sample without them.
            (samples,) = await ctx.roles.policy.generate([conv], params)
        # Only samples that ended on their own: one cut off by the token budget is no answer
        # to prefer, and its passing a length check would say more about the budget.
        update["samples"] = [s.text for s in samples if s.finish_reason != "length"]
        update["generated_tokens"] = update.get("generated_tokens", 0) + sum(
            s.num_tokens for s in samples)
    return update
