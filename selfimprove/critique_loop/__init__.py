"""The critique loop: generate → check → critique → refine → … → judge, one prompt per thread.

One node per file; :mod:`.graph` wires them and offers the plain calls (:func:`acritique`,
:func:`critique_many`); :mod:`.state` holds the state and the run-time context.
"""

from selfimprove.critique_loop.graph import (
    acritique,
    build_critique_graph,
    critique_graph,
    critique_many,
    iter_critiques,
)
from selfimprove.critique_loop.state import CritiqueContext, CritiqueState
from selfimprove.roles import Roles

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
