"""selfimprove: self-improving language models through AI feedback."""

__version__ = "0.1.0"
