"""The critique loop as a compiled LangGraph graph (for the CLI, embedding and LangGraph Server).

Invoke with a :class:`selfimprove.critique_loop.CritiqueContext`::

    from graphs.critique_loop import graph
    state = await graph.ainvoke({"prompt_id": "p1", "prompt": "..."}, context=ctx)

or build a context from config with :func:`selfimprove.wiring.make_context`.
"""

from selfimprove.critique_loop.graph import build_critique_graph

graph = build_critique_graph()
