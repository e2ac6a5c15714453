"""Backends: one async chat interface, several implementations (see base.py)."""

from selfimprove.backends.base import Backend

__all__ = ["Backend"]
