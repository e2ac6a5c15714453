"""Judges: pairwise (position-swapped) and pointwise (additive rubric)."""

from selfimprove.judges.pairwise import PairwiseJudge, checks_verdict, combine
from selfimprove.judges.pointwise import PointwiseJudge, RubricItem

__all__ = ["PairwiseJudge", "PointwiseJudge", "RubricItem", "checks_verdict", "combine"]
