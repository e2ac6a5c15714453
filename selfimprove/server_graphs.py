"""Our graphs for LangGraph Server (``langgraph dev``, ``langgraph.json``): contexts that come
from serialisable configuration.

A LangGraph Server run carries its context as JSON, but the critique graph needs loaded
backends. These graphs accept either the live object (a :class:`CritiqueContext`, as when
embedding) or configuration:

- ``critique_loop``: ``context`` = a :class:`~selfimprove.config.CritiqueConfig` as JSON (or
  nothing: the defaults, the embedded model). Contexts are built once per distinct
  configuration and reused, so the models load on the first run only.
- ``improvement_cycle``: ``context`` = ``{"run_dir": ..., "config": <RunConfig JSON>}`` starts
  a run (``config`` left out: continue the run in ``run_dir``). The run keeps its own SQLite
  checkpoints in the run directory, exactly as ``selfimprove run`` does.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any, TypeVar

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from pydantic import BaseModel, ConfigDict, ValidationError
from typing_extensions import TypedDict

from selfimprove.config import CritiqueConfig, RunConfig
from selfimprove.critique_loop.graph import critique_graph
from selfimprove.critique_loop.state import CritiqueContext, CritiqueInput, CritiqueState

__all__ = ["RunRequest", "critique_server_graph", "cycle_server_graph"]

_CONTEXTS: dict[str, CritiqueContext] = {}
_LOCK = threading.Lock()  # not asyncio's: a server may run graphs on more than one loop


async def critique_context_of(context: Any) -> CritiqueContext:
    """The live context for a run's ``context``: as given, or built (once) from config."""
    if isinstance(context, CritiqueContext):
        return context
    cfg = context if isinstance(context, CritiqueConfig) else _validated(
        CritiqueConfig, context)
    # Loading models blocks: a worker thread keeps the server's event loop answering.
    return await asyncio.to_thread(_built, cfg)


M = TypeVar("M", bound=BaseModel)


def _validated(model: type[M], context: Any) -> M:
    """``context`` (JSON) as ``model``; errors name the field, as a config file's do."""
    from selfimprove.yamlio import validation_error

    try:
        return model.model_validate(context or {})
    except ValidationError as exc:
        raise validation_error("context", None, exc) from None


def _built(cfg: CritiqueConfig) -> CritiqueContext:
    from selfimprove.wiring import make_context

    key = cfg.model_dump_json()
    with _LOCK:
        if key not in _CONTEXTS:
            _CONTEXTS[key] = make_context(cfg)
        return _CONTEXTS[key]


async def _critique(state: CritiqueState, runtime: Runtime[Any]) -> CritiqueState:
    ctx = await critique_context_of(runtime.context)
    return await critique_graph().ainvoke(state, context=ctx)


def critique_server_graph():
    """The critique loop as one node whose context may be configuration (JSON)."""
    g = StateGraph(CritiqueState, input_schema=CritiqueInput)
    g.add_node("critique_loop", _critique)
    g.add_edge(START, "critique_loop")
    g.add_edge("critique_loop", END)
    return g.compile(name="critique_loop")


class RunRequest(BaseModel):
    """What a LangGraph Server run of the improvement cycle is given as its context."""

    model_config = ConfigDict(extra="forbid")
    run_dir: str
    config: RunConfig | None = None  # None: continue the run in run_dir


class CycleInput(TypedDict, total=False):
    pass


class CycleOutput(TypedDict, total=False):
    run_dir: str
    current: str
    cycles: list[dict[str, Any]]


async def _run(state: CycleInput, runtime: Runtime[Any]) -> CycleOutput:
    ctx = runtime.context
    request = ctx if isinstance(ctx, RunRequest) else _validated(RunRequest, ctx)
    # A run is hours of blocking work (file I/O, training): its own thread and event loop
    # keep the server answering (LangGraph Server refuses blocking calls on its loop).
    return await asyncio.to_thread(_run_blocking, request)


def _run_blocking(request: RunRequest) -> CycleOutput:
    from selfimprove.registry import PolicyRegistry
    from selfimprove.rundir import RunDir
    from selfimprove.runner import run

    where = RunDir(request.run_dir)
    resume = request.config is None or where.holds_run()
    run(request.config, where.path, resume=resume)
    return {
        "run_dir": str(where.path),
        "current": PolicyRegistry(where.path).current_version(),
        "cycles": [json.loads(c.model_dump_json()) for c in where.load_cycles()],
    }


def cycle_server_graph():
    """The improvement cycle for LangGraph Server: one node that starts or continues a run."""
    g = StateGraph(CycleOutput, input_schema=CycleInput, output_schema=CycleOutput)
    g.add_node("run", _run)
    g.add_edge(START, "run")
    g.add_edge("run", END)
    return g.compile(name="improvement_cycle")
