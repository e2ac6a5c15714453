"""Graph builders: the critique loop (and the improvement cycle)."""

from selfimprove.graph.critique import (
    acritique,
    build_critique_graph,
    critique_graph,
    critique_many,
    iter_critiques,
)
from selfimprove.graph.state import CritiqueContext, CritiqueState, Roles

__all__ = [
    "CritiqueContext",
    "CritiqueState",
    "Roles",
    "acritique",
    "build_critique_graph",
    "critique_graph",
    "critique_many",
    "iter_critiques",
]
