"""The executable check vocabulary: exact pass/fail results and details, regex time limits."""

from __future__ import annotations

import time

import pytest
from pydantic import TypeAdapter

from selfimprove.checks import (
    Check,
    count_sentences,
    count_words,
    passes,
    run_check,
    run_checks,
)
from selfimprove.constitution import Constitution
from selfimprove.types import CheckResult

_check = TypeAdapter(Check)


def check(**fields) -> Check:
    return _check.validate_python({"id": "c", **fields})


@pytest.mark.parametrize(
    ("spec", "text", "passed", "detail"),
    [
        ({"kind": "max_words", "value": 3}, "one two  three", True, "3 words <= 3"),
        ({"kind": "max_words", "value": 3}, "one two\nthree four", False, "4 words > 3"),
        ({"kind": "max_words", "value": 0}, "   ", True, "0 words <= 0"),
        ({"kind": "min_words", "value": 2}, "one two", True, "2 words >= 2"),
        ({"kind": "min_words", "value": 2}, "one", False, "1 words < 2"),
        ({"kind": "max_chars", "value": 5}, "abcde", True, "5 chars <= 5"),
        ({"kind": "max_chars", "value": 5}, "abcdef", False, "6 chars > 5"),
        ({"kind": "max_sentences", "value": 2}, "Pi is 3.14. It is irrational.", True,
         "2 sentences <= 2"),
        ({"kind": "max_sentences", "value": 2}, "One. Two! Three?", False, "3 sentences > 2"),
        ({"kind": "forbid_regex", "pattern": r"^\s*Sure\b"}, "Sure, here it is.", False,
         "matched 'Sure' at char 0"),
        ({"kind": "forbid_regex", "pattern": r"^\s*Sure\b"}, "It is sure.", True, "no match"),
        ({"kind": "forbid_regex", "pattern": r"^sure", "ignore_case": True}, "SURE thing", False,
         "matched 'SURE' at char 0"),
        ({"kind": "forbid_regex", "pattern": r"^sure"}, "SURE thing", True, "no match"),
        ({"kind": "forbid_regex", "pattern": r"^Note:", "multiline": True}, "Hi.\nNote: x",
         False, "matched 'Note:' at char 4"),
        ({"kind": "forbid_regex", "pattern": r"^Note:"}, "Hi.\nNote: x", True, "no match"),
        ({"kind": "forbid_regex", "pattern": r"a.b", "dotall": True}, "a\nb", False,
         "matched 'a b' at char 0"),
        ({"kind": "require_regex", "pattern": r"\b(?:hi|hello)\b", "ignore_case": True},
         "Hello there", True, "matched 'Hello' at char 0"),
        ({"kind": "require_regex", "pattern": r"\bhello\b"}, "Goodbye", False,
         r"no match for /\bhello\b/"),
        ({"kind": "forbid_phrases", "phrases": ["I hope this helps", "As an AI"]},
         "Paris.\n\nI HOPE this\nhelps!", False, "contains 'I hope this helps'"),
        ({"kind": "forbid_phrases", "phrases": ["It's important to note", "as an ai"]},
         "As an AI, it\u2019s important to note that.", False,
         "contains 'It's important to note', 'as an ai'"),
        ({"kind": "forbid_phrases", "phrases": ["I hope this helps"]}, "Paris.", True,
         "no forbidden phrase"),
    ],
)
def test_each_kind_exact(spec: dict, text: str, passed: bool, detail: str) -> None:
    result = run_check(check(**spec), text)
    assert result == CheckResult(
        check_id="c", kind=spec["kind"], passed=passed, hard=True, detail=detail
    )


def test_long_match_is_shortened_in_detail() -> None:
    result = run_check(check(kind="forbid_regex", pattern=r"x+"), "x" * 100)
    assert result.detail == "matched '" + "x" * 37 + "...' at char 0"


def test_counting() -> None:
    assert count_words("  a\tb\n\nc  ") == 3
    assert count_words("") == 0
    assert count_sentences("") == 0
    assert count_sentences("No end punctuation") == 1
    assert count_sentences("1. First item\n2. Second item\n") == 2
    assert count_sentences("Really?! Yes.") == 2
    assert count_sentences("It costs $3.50 today. Fine.") == 2


@pytest.mark.parametrize("pattern", [r"(a|aa)+$", r"(a+)+$"])
def test_pathological_regex_never_hangs(pattern: str) -> None:
    # "(a|aa)+$" backtracks exponentially even in the regex package; "(a+)+$" it optimises.
    # Either way the check must come back quickly; a timeout is a failure, never an exception.
    c = check(kind="forbid_regex", pattern=pattern)
    start = time.perf_counter()
    result = run_check(c, "a" * 40 + "b", regex_timeout=0.2)
    elapsed = time.perf_counter() - start
    assert elapsed < 3.0
    if pattern == r"(a|aa)+$":
        assert result.passed is False
        assert result.detail == "regex timed out"
    else:
        assert (result.passed, result.detail) == (True, "no match")


def test_require_regex_timeout_fails_too() -> None:
    c = check(kind="require_regex", pattern=r"(a|aa)+$")
    result = run_check(c, "a" * 40 + "b", regex_timeout=0.1)
    assert (result.passed, result.detail) == (False, "regex timed out")


def _constitution(checks: list[dict]) -> Constitution:
    return Constitution.model_validate(
        {
            "name": "t",
            "version": 1,
            "principles": [{"id": "p", "critique": "c", "revision": "r"}],
            "checks": checks,
            "judge": {"pairwise": "pick", "pointwise": [{"points": 1, "criterion": "good"}]},
        }
    )


def test_run_checks_order_and_passes_ignores_soft() -> None:
    const = _constitution(
        [
            {"id": "short", "kind": "max_words", "value": 3},
            {"id": "no_sure", "kind": "forbid_regex", "pattern": "^Sure", "hard": False},
        ]
    )
    results = run_checks(const, "Sure, Paris.")
    assert [(r.check_id, r.kind, r.passed, r.hard) for r in results] == [
        ("short", "max_words", True, True),
        ("no_sure", "forbid_regex", False, False),
    ]
    assert passes(results) is True  # only a soft check failed
    results = run_checks(const, "Sure, it is Paris.")
    assert [r.passed for r in results] == [False, False]
    assert passes(results) is False
    assert passes([]) is True
    assert run_checks(_constitution([]), "anything") == []
