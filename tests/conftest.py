"""Shared fixtures: one embedded-model backend per test session (loading is the slow part)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def embedded_backend():
    from selfimprove.backends.transformers import TransformersBackend

    backend = TransformersBackend(max_batch_size=32, max_wait_ms=30)
    yield backend
    backend.close()
