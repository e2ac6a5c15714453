"""The examples in docs/checks.md load as written: each YAML block in a constitution, each JSON
line as a prompt record, and every check kind has one of each."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from selfimprove.checks import CHECK_KINDS
from selfimprove.constitution import load_constitution
from selfimprove.sources import load_prompt_records

DOC = Path(__file__).resolve().parent.parent / "docs" / "checks.md"
BLOCK = re.compile(r"^```(yaml|json)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(kind: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(DOC.read_text(encoding="utf-8")) if lang == kind]


@pytest.mark.parametrize("index", range(len(blocks("yaml"))))
def test_each_yaml_example_loads_as_a_constitution(tmp_path: Path, index: int) -> None:
    body = blocks("yaml")[index]
    # a block of checks alone goes into a child of the shipped base constitution
    head = "name: doc\nversion: 1\n" + ("" if "extends:" in body else "extends: base\n")
    path = tmp_path / "doc.yaml"
    path.write_text(head + body, encoding="utf-8")
    constitution = load_constitution(path)
    assert constitution.principles  # resolved, with the parent's principles


@pytest.mark.parametrize("index", range(len(blocks("json"))))
def test_each_json_example_loads_as_a_prompt_record(tmp_path: Path, index: int) -> None:
    path = tmp_path / "doc.jsonl"
    path.write_text(blocks("json")[index], encoding="utf-8")
    (record,) = load_prompt_records(path)
    assert record.checks


def test_every_check_kind_has_a_yaml_and_a_json_example() -> None:
    kinds = set(CHECK_KINDS)
    assert {"max_words", "lowercase", "json_object", "quoted"} <= kinds
    for lang in ("yaml", "json"):
        text = "\n".join(blocks(lang))
        shown = {k for k in kinds if re.search(rf"kind\"?: \"?{k}\b", text)}
        assert shown == kinds, f"{lang}: no example of {sorted(kinds - shown)}"
