"""selfimprove: self-improving language models through AI feedback.

The public API is re-exported here lazily, so ``import selfimprove`` stays light (no torch,
transformers or langgraph until a name that needs them is used).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "CritiqueConfig": "selfimprove.config",
    "RunConfig": "selfimprove.config",
    "load_config": "selfimprove.config",
    "Constitution": "selfimprove.constitution",
    "load_constitution": "selfimprove.constitution",
    "CritiqueContext": "selfimprove.critique_loop",
    "Roles": "selfimprove.critique_loop",
    "acritique": "selfimprove.critique_loop",
    "build_critique_graph": "selfimprove.critique_loop",
    "critique_many": "selfimprove.critique_loop",
    "build_cycle_graph": "selfimprove.improvement_cycle.graph",
    "make_context": "selfimprove.wiring",
    "make_backend": "selfimprove.backends.factory",
    "PreferenceStore": "selfimprove.store",
    "PolicyRegistry": "selfimprove.registry",
    "CritiqueResult": "selfimprove.types",
    "PolicyRef": "selfimprove.types",
    "SamplingParams": "selfimprove.types",
    "run": "selfimprove.runner",
    "arun": "selfimprove.runner",
    "reflect": "selfimprove.agents",
    "TrafficRecorder": "selfimprove.traffic",
    "Exchange": "selfimprove.traffic",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'selfimprove' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
