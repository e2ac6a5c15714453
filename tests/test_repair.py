"""Mechanical repairs of failed checks: each kind, their order, and where none applies."""

from __future__ import annotations

import json

import pytest

from selfimprove.checks import run_checks
from selfimprove.repair import REPAIRABLE_KINDS, repair_response
from selfimprove.sources import parse_prompt_checks
from selfimprove.types import passes


def fix(checks: list[dict], text: str):
    parsed = parse_prompt_checks(checks)
    out = repair_response(parsed, text)
    if out is not None:  # whatever comes back passes every hard check
        assert passes(run_checks(parsed, out.text))
    return out


def test_a_passing_response_comes_back_unchanged():
    out = fix([{"kind": "lowercase"}], "all lowercase here.")
    assert out is not None and out.text == "all lowercase here." and out.fixed == ()


@pytest.mark.parametrize(("check", "text", "want"), [
    ({"kind": "lowercase"}, "Über Café, Σ.", "über café, σ."),
    ({"kind": "ends_with", "value": "Any questions?"}, "Tea is nice",
     "Tea is nice. Any questions?"),
    ({"kind": "ends_with", "value": "stay safe."}, "Storms pass.  \n", "Storms pass. Stay safe."),
    ({"kind": "starts_with", "value": "Imagine"}, "  A storm rolls in.",
     "Imagine: A storm rolls in."),
    ({"kind": "starts_with", "value": "Here is"}, "- one\n- two", "Here is:\n- one\n- two"),
    ({"kind": "no_commas"}, "Red, green ,blue and 1,000.", "Red green blue and 1 000."),
    ({"kind": "quoted"}, "  Be kind.\n", '"Be kind."'),
    ({"kind": "json_object"}, 'Bees make "honey".', json.dumps({"summary": 'Bees make "honey".'})),
])
def test_each_edge_and_character_kind(check, text, want):
    out = fix([check], text)
    assert out is not None and out.text == want
    (fixed,) = out.fixed  # the check's id: its kind, plus a hash of its value if it has one
    assert fixed.split("-")[0] == check["kind"]


def test_bullets_reflow_sentences_evenly_without_dropping_any():
    text = "Yeast eats sugar. It makes gas! The gas is trapped? Dough rises.\nThen bake it."
    out = fix([{"kind": "bullet_count", "min": 2, "max": 2}], text)
    assert out is not None
    assert out.text == ("- Yeast eats sugar. It makes gas! The gas is trapped?\n"
                        "- Dough rises. Then bake it.")
    # existing list markers (nested ones too) become plain sentences first
    nested = "Intro line\n- one.\n  - one b.\n1. two."
    out = fix([{"kind": "bullet_count", "min": 2, "max": 2}], nested)
    assert out is not None and out.text == "- Intro line one.\n- one b. two."


def test_paragraphs_and_a_minimum_only_range():
    text = "One. Two. Three. Four."
    out = fix([{"kind": "paragraph_count", "min": 3, "max": 3}], text)
    assert out is not None and out.text == "One. Two.\n\nThree.\n\nFour."
    out = fix([{"kind": "bullet_count", "min": 3}], text)
    assert out is not None and out.text.count("\n- ") == 2  # the minimum, not one a sentence


def test_too_few_sentences_is_no_repair_rather_than_invented_content():
    assert fix([{"kind": "bullet_count", "min": 4, "max": 4}], "One. Two.") is None
    assert fix([{"kind": "paragraph_count", "min": 3, "max": 3}], "Only one sentence") is None


@pytest.mark.parametrize("check", [
    {"kind": "include_words", "words": ["hive"]},
    {"kind": "max_words", "value": 2},
    {"kind": "min_words", "value": 50},
    {"kind": "require_regex", "pattern": "hives?"},
    {"kind": "forbid_phrases", "phrases": ["make"]},
])
def test_kinds_without_a_mechanical_fix_are_left_to_the_reviser(check):
    assert check["kind"] not in REPAIRABLE_KINDS
    assert fix([check, {"kind": "lowercase"}], "Bees make honey in summer.") is None


def test_several_fixes_in_order_and_the_result_must_pass():
    checks = [{"kind": "lowercase"}, {"kind": "ends_with", "value": "stay safe."}]
    out = fix(checks, "Thunder is LOUD. Dogs hide")
    assert out is not None and out.text == "thunder is loud. dogs hide. stay safe."
    assert [i.split("-")[0] for i in out.fixed] == ["ends_with", "lowercase"]
    # A reflow into bullets moves the opening words; the later starts_with fix restores them.
    out = fix([{"kind": "starts_with", "value": "Here is"},
               {"kind": "bullet_count", "min": 2, "max": 2}], "Here is why. Yeast. Gas.")
    assert out is not None and out.text.startswith("Here is:\n- ")
    # A fix that breaks another rule is no repair: the closing words exceed the word limit.
    assert fix([{"kind": "ends_with", "value": "Hope this helps."},
                {"kind": "max_words", "value": 4}], "Bees make honey.") is None


def test_soft_failures_are_not_repaired_and_empty_text_never_is():
    out = fix([{"kind": "lowercase", "hard": False}], "Loud")
    assert out is not None and out.text == "Loud" and out.fixed == ()
    assert fix([{"kind": "quoted"}], "  \n") is None


def test_a_failed_json_attempt_is_not_wrapped_as_a_string():
    # braces or a fence mean the model tried JSON: a "summary" around its debris is no answer
    assert fix([{"kind": "json_object"}], '{"name": "tea", "steps": [1, 2') is None
    assert fix([{"kind": "json_object"}], "```json\n{'a': 1}\n```") is None
