"""generate: the policy's first response (and, for best-of-N, extra samples).

Given a conversation, the response answers its last user turn; given a response (an agent's
answer), that response is the first one and the policy is not asked for another.
"""

from __future__ import annotations

from langgraph.runtime import Runtime

from selfimprove.conversation import ConversationError, as_messages, split_answer, transcript
from selfimprove.critique_loop.state import CritiqueContext, CritiqueState
from selfimprove.critique_loop.text import prompt_seed
from selfimprove.hashing import prompt_id
from selfimprove.types import Message


def conversation_of(state: CritiqueState) -> tuple[list[Message], str | None]:
    """The conversation to answer and the answer given with it (None: generate one)."""
    given = state.get("response")
    if state.get("messages"):
        conv, answer = split_answer(as_messages(state["messages"]))
        return conv, given if given is not None else answer
    if not state.get("prompt"):
        raise ConversationError("the critique graph needs a 'prompt' or 'messages'")
    return [Message(role="user", content=state["prompt"])], given


async def generate(state: CritiqueState, runtime: Runtime[CritiqueContext]) -> CritiqueState:
    ctx = runtime.context
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
        (samples,) = await ctx.roles.policy.generate([conv], params)
        # Only samples that ended on their own: one cut off by the token budget is no answer
        # to prefer, and its passing a length check would say more about the budget.
        update["samples"] = [s.text for s in samples if s.finish_reason != "length"]
        update["generated_tokens"] = update.get("generated_tokens", 0) + sum(
            s.num_tokens for s in samples)
    return update
