"""The package's public names resolve, and importing the package stays light."""

from __future__ import annotations

import subprocess
import sys

import selfimprove


def test_every_public_name_resolves():
    for name in selfimprove.__all__:
        assert getattr(selfimprove, name) is not None, name


def test_import_does_not_load_torch():
    code = "import sys, selfimprove; print('torch' in sys.modules, 'langgraph' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
