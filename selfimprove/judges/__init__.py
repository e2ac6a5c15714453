"""Judges: pairwise (position-swapped) and pointwise (additive rubric)."""

from selfimprove.constitution import RubricItem
from selfimprove.judges.pairwise import PairwiseJudge, checks_verdict, combine
from selfimprove.judges.pointwise import PointwiseJudge

__all__ = ["PairwiseJudge", "PointwiseJudge", "RubricItem", "checks_verdict", "combine"]
