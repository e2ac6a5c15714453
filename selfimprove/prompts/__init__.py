"""Prompt templates (files beside this module) and the one place they are rendered."""

from __future__ import annotations

from functools import cache
from importlib import resources
from string import Template

from selfimprove.types import Message


@cache
def _template(name: str) -> Template:
    return Template(resources.files(__package__).joinpath(f"{name}.txt").read_text("utf-8"))


def render(name: str, **values: str) -> str:
    """Fill template ``name`` (``prompts/<name>.txt``); a missing value is a KeyError."""
    return _template(name).substitute(values).strip()


def user(name: str, **values: str) -> list[Message]:
    """A one-message conversation whose user turn is the rendered template."""
    return [Message(role="user", content=render(name, **values))]
