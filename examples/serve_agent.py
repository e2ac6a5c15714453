"""An agent that answers through ``selfimprove serve`` with the official ``openai`` client.

Start a server that records its traffic, run this agent against it, then let a cycle learn
from what was served:

    selfimprove serve runs/traffic --config examples/configs/traffic-cpu.yaml &
    python examples/serve_agent.py --base-url http://127.0.0.1:8000/v1
    selfimprove run --resume runs/traffic

The agent is a small trip-planning assistant: for each destination it asks a question, then
a follow-up in the same conversation, so the recorded traffic holds multi-turn
conversations with a system prompt. ``--critique`` asks the server for critiqued answers
(each one is then recorded with its critique and becomes training rows directly).
"""

from __future__ import annotations

import argparse
import os

from openai import OpenAI

SYSTEM = "You are a friendly travel assistant. Answer the traveller's questions."
DESTINATIONS = ["Lisbon", "Kyoto", "Cape Town", "Reykjavik", "Lima", "Vienna", "Hanoi",
                "Montreal"]


def converse(client: OpenAI, model: str, city: str, *, critique: bool = False,
             max_tokens: int = 128) -> list[dict]:
    """One two-turn conversation about ``city``; returns the messages, answers included."""
    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"I am visiting {city} for three days. What should "
                                            "I not miss?"}]
    extra = {"critique": True} if critique else None
    for follow_up in ("What food should I try there?", None):
        reply = client.chat.completions.create(model=model, messages=messages,
                                               max_tokens=max_tokens, extra_body=extra)
        messages.append({"role": "assistant", "content": reply.choices[0].message.content})
        if follow_up is None:
            break
        messages.append({"role": "user", "content": follow_up})
    return messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--destinations", type=int, default=len(DESTINATIONS))
    parser.add_argument("--critique", action="store_true", help="ask for critiqued answers")
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    # The server asks for a key only when it was started with one (SELFIMPROVE_API_KEY).
    client = OpenAI(base_url=args.base_url,
                    api_key=os.environ.get("SELFIMPROVE_API_KEY", "not-needed"))
    model = client.models.list().data[0].id
    for city in DESTINATIONS[: args.destinations]:
        messages = converse(client, model, city, critique=args.critique,
                            max_tokens=args.max_tokens)
        print(f"== {city}")
        for m in messages[1:]:
            print(f"[{m['role']}] {m['content']}")


if __name__ == "__main__":
    main()
