"""Constitutions shipped with selfimprove (installed as the package selfimprove.constitutions)."""
