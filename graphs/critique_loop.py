"""The critique loop for LangGraph Server (``langgraph.json``) and for embedding.

Its context may be the live :class:`selfimprove.critique_loop.CritiqueContext` or, as a
LangGraph Server run sends it, a :class:`selfimprove.config.CritiqueConfig` as JSON (models
load once per distinct configuration)::

    POST /runs/wait {"assistant_id": "critique_loop",
                     "input": {"prompt": "Why is the sky blue?"},
                     "context": {"constitution": "concise", "max_rounds": 1}}

The input is a prompt, or ``messages`` (a conversation) and optionally the ``response`` an
agent gave. To embed the graph's nodes themselves, use
:func:`selfimprove.critique_loop.build_critique_graph`.
"""

from selfimprove.server_graphs import critique_server_graph

graph = critique_server_graph()
