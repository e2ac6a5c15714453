"""The executable check vocabulary: exact pass/fail results and details, regex time limits."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import get_args

import pytest
from pydantic import TypeAdapter, ValidationError

from selfimprove.checks import (
    CHECK_KINDS,
    Check,
    count_bullets,
    count_paragraphs,
    count_sentences,
    count_words,
    passes,
    run_check,
    run_checks,
)
from selfimprove.constitution import Constitution, constitution_to_yaml, load_constitution
from selfimprove.errors import ConfigError
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
        # composed first: "e" and a combining accent are one character
        ({"kind": "max_chars", "value": 4}, "cafe\u0301", True, "4 chars <= 4"),
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
        # a decomposed accent is the same letter
        ({"kind": "forbid_phrases", "phrases": ["caf\u00e9"]}, "Un cafe\u0301 noir.", False,
         "contains 'caf\u00e9'"),
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


# --- IFEval-style verifiable instructions -------------------------------------------------

NEW_KIND_CASES = [
    # lowercase: Unicode-aware, digits and punctuation are fine
    ({"kind": "lowercase"}, "all good, 3 items: caf\u00e9!", True, "no uppercase letters"),
    ({"kind": "lowercase"}, "une \u00c9cole", False, "uppercase '\u00c9' at char 4"),
    ({"kind": "lowercase"}, "\u03b1\u03b2\u03b3 \u0394", False, "uppercase '\u0394' at char 4"),
    ({"kind": "lowercase"}, "\u03b1\u03b2\u03b3 \u03c3\u03c2 1984 ?!", True,
     "no uppercase letters"),
    ({"kind": "lowercase"}, "", True, "no uppercase letters"),
    # starts_with: leading whitespace, quotes and emphasis skipped; case-insensitive
    ({"kind": "starts_with", "value": "Dear customer"}, "  Dear customer, thanks.", True,
     "starts with 'Dear customer'"),
    ({"kind": "starts_with", "value": "Dear customer"}, '\n**"DEAR Customer**, thanks.', True,
     "starts with 'Dear customer'"),
    ({"kind": "starts_with", "value": "Dear customer"}, "\u201cdear customer\u201d", True,
     "starts with 'Dear customer'"),
    ({"kind": "starts_with", "value": "Dear customer"}, "Hi, dear customer", False,
     "starts with 'Hi, dear customer', not 'Dear customer'"),
    ({"kind": "starts_with", "value": "Yes"}, "Yesterday it rained.", False,
     "starts with 'Yesterday it rained.', not 'Yes'"),
    ({"kind": "starts_with", "value": "**Answer:**"}, "**Answer:** 4", True,
     "starts with '**Answer:**'"),
    ({"kind": "starts_with", "value": "I'm"}, "I\u2019m sure.", True, "starts with 'I'm'"),
    ({"kind": "starts_with", "value": "Hello"}, "", False, "starts with '', not 'Hello'"),
    # ends_with: trailing whitespace ignored; one ./!/? allowed only when value has no mark
    ({"kind": "ends_with", "value": "stay safe"}, "Bye for now. Stay safe.  \n", True,
     "ends with 'stay safe'"),
    ({"kind": "ends_with", "value": "stay safe"}, "bye, stay safe\t", True,
     "ends with 'stay safe'"),
    ({"kind": "ends_with", "value": "stay safe"}, "bye, STAY SAFE!", True,
     "ends with 'stay safe'"),
    ({"kind": "ends_with", "value": "stay safe"}, "bye, stay safe?!", False,
     "ends with 'bye, stay safe?!', not 'stay safe'"),
    ({"kind": "ends_with", "value": "stay safe"}, "stay safe, friend.", False,
     "ends with 'stay safe, friend.', not 'stay safe'"),
    ({"kind": "ends_with", "value": "stay safe"}, "please outstay safe", False,
     "ends with 'please outstay safe', not 'stay safe'"),
    ({"kind": "ends_with", "value": "stay safe."}, "Stay safe. \n", True,
     "ends with 'stay safe.'"),
    ({"kind": "ends_with", "value": "stay safe."}, "Stay safe!", False,
     "ends with 'Stay safe!', not 'stay safe.'"),
    ({"kind": "ends_with", "value": "stay safe."}, "Stay safe", False,
     "ends with 'Stay safe', not 'stay safe.'"),
    ({"kind": "ends_with", "value": "Any questions?"}, "So.\nAny\nquestions?", True,
     "ends with 'Any questions?'"),
    # ends_with: trailing quotes and emphasis skipped, as starts_with skips leading ones
    ({"kind": "ends_with", "value": "stay safe."}, "Bye. **Stay safe.**", True,
     "ends with 'stay safe.'"),
    ({"kind": "ends_with", "value": "stay safe"}, '"Bye. Stay safe!"\n', True,
     "ends with 'stay safe'"),
    ({"kind": "ends_with", "value": "stay safe"}, "\u201cStay safe\u201d", True,
     "ends with 'stay safe'"),
    ({"kind": "ends_with", "value": '"stay safe"'}, 'he said "stay safe"', True,
     "ends with '\"stay safe\"'"),
    ({"kind": "ends_with", "value": "stay safe."}, "**Stay safe!**", False,
     "ends with '**Stay safe!**', not 'stay safe.'"),
    ({"kind": "ends_with", "value": "stay safe"}, "Bye. **Stay safe**.", True,
     "ends with 'stay safe'"),
    ({"kind": "ends_with", "value": "students"}, "Thanks, students'", False,
     "ends with 'Thanks, students'', not 'students'"),
    # zero-width characters at the edges do not decide
    ({"kind": "ends_with", "value": "stay safe"}, "Stay safe.\u200b", True,
     "ends with 'stay safe'"),
    ({"kind": "starts_with", "value": "Dear"}, "\ufeffDear you", True, "starts with 'Dear'"),
    # include_words: whole words, case-insensitive, Unicode
    ({"kind": "include_words", "words": ["caf\u00e9", "river"]},
     "The CAF\u00c9 by the River.", True, "all 2 words present"),
    ({"kind": "include_words", "words": ["caf\u00e9", "river"]}, "Two caf\u00e9s, no rivers.",
     False, "missing 'caf\u00e9', 'river'"),
    ({"kind": "include_words", "words": ["caf\u00e9"]}, "a cafe near here", False,
     "missing 'caf\u00e9'"),
    ({"kind": "include_words", "words": ["caf\u00e9"]}, "un cafe\u0301 noir", True,
     "all 1 word present"),  # decomposed accent (e + U+0301) equals the composed one
    ({"kind": "include_words", "words": ["order number", "C++"]},
     "Your order\nnumber: 5 (C++).", True, "all 2 words present"),
    ({"kind": "include_words", "words": ["C++"]}, "ObjC++ is another one", False,
     "missing 'C++'"),
    # bullet_count: -, *, \u2022, "1." and "1)"; nested ones count; rules and emphasis do not
    ({"kind": "bullet_count", "min": 3, "max": 3}, "Intro:\n- a\n- b\n  - b1\n", True,
     "3 bullets in 3..3"),
    ({"kind": "bullet_count", "min": 4}, "1. one\n2) two\n    * nested\n\u2022three\nEnd.",
     True, "4 bullets >= 4"),
    ({"kind": "bullet_count", "max": 1}, "1. one\n2. two", False, "2 bullets > max 1"),
    ({"kind": "bullet_count", "min": 1}, "---\n* * *\n*emphasis*\n-5 degrees\n1.5 million",
     False, "0 bullets < min 1"),
    ({"kind": "bullet_count", "max": 0}, "", True, "0 bullets <= 0"),
    # no_commas: ASCII and fullwidth
    ({"kind": "no_commas"}, "Yes. Then go; now!", True, "no commas"),
    ({"kind": "no_commas"}, "Yes, then go, now.", False, "2 commas (first at char 3)"),
    ({"kind": "no_commas"}, "\u597d\uff0c\u8d70", False, "1 comma (first at char 1)"),
    # paragraph_count: whitespace-only lines are blank; leading/trailing blank lines ignored
    ({"kind": "paragraph_count", "min": 2, "max": 2}, "One.\n  \t\nTwo.", True,
     "2 paragraphs in 2..2"),
    ({"kind": "paragraph_count", "min": 2, "max": 2}, "\n\n  \nOne.\n\n\n\nTwo\nlines.\n \n",
     True, "2 paragraphs in 2..2"),
    ({"kind": "paragraph_count", "min": 2}, "One.\nTwo.", False, "1 paragraph < min 2"),
    ({"kind": "paragraph_count", "max": 2}, "a\n\nb\n\nc", False, "3 paragraphs > max 2"),
    ({"kind": "paragraph_count", "min": 1}, " \n\t\n", False, "0 paragraphs < min 1"),
    ({"kind": "paragraph_count", "max": 0}, "", True, "0 paragraphs <= 0"),
    # json_object: exactly one object, bare or fenced
    ({"kind": "json_object"}, '{"answer": 4, "why": "2+2"}', True,
     "a JSON object with 2 keys"),
    ({"kind": "json_object"}, '\n ```json\n{"answer": 4}\n```\n', True,
     "a JSON object with 1 key in a code fence"),
    ({"kind": "json_object"}, '```\n{}\n```', True, "a JSON object with 0 keys in a code fence"),
    ({"kind": "json_object"}, "[1, 2]", False, "JSON is an array, not an object"),
    ({"kind": "json_object"}, '```json\n[{"a": 1}]\n```', False,
     "JSON is an array, not an object"),
    ({"kind": "json_object"}, '"text"', False, "JSON is a string, not an object"),
    ({"kind": "json_object"}, "4", False, "JSON is a number, not an object"),
    ({"kind": "json_object"}, "null", False, "JSON is null, not an object"),
    ({"kind": "json_object"}, '{"a": 1} {"b": 2}', False,
     "not valid JSON: Extra data: line 1 column 10 (char 9)"),
    ({"kind": "json_object"}, 'Here: {"a": 1}', False,
     "not valid JSON: Expecting value: line 1 column 1 (char 0)"),
    ({"kind": "json_object"}, '{"a": NaN}', False, "not valid JSON: NaN is not JSON"),
    ({"kind": "json_object"}, '{"a": 1, "b": {"a": 2}, "a": 3}', False,
     "not valid JSON: the key 'a' is given twice in one object"),
    ({"kind": "json_object"}, '```{"a": 1}```', True, "a JSON object with 1 key in a code fence"),
    ({"kind": "json_object"}, '```python\n{"a": 1}\n```', False,
     "not valid JSON: Expecting value: line 1 column 1 (char 0)"),
    ({"kind": "json_object"}, "[" * 5000 + "]" * 5000, False,
     "not valid JSON: nested too deeply"),
    # quoted: straight or curly double quotes around the whole (stripped) response
    ({"kind": "quoted"}, '  "Be kind."\n', True, "wrapped in double quotes"),
    ({"kind": "quoted"}, "\u201cBe kind.\u201d", True, "wrapped in double quotes"),
    ({"kind": "quoted"}, "'Be kind.'", False,
     "starts with ''' and ends with ''', not double quotes"),
    ({"kind": "quoted"}, '"Be kind." she said', False,
     "starts with '\"' and ends with 'd', not double quotes"),
    ({"kind": "quoted"}, '"', False, "only '\"': not text wrapped in double quotes"),
    ({"kind": "quoted"}, "  ", False, "empty response"),
]


@pytest.mark.parametrize(("spec", "text", "passed", "detail"), NEW_KIND_CASES)
def test_new_kinds_exact(spec: dict, text: str, passed: bool, detail: str) -> None:
    result = run_check(check(**spec), text)
    assert result == CheckResult(
        check_id="c", kind=spec["kind"], passed=passed, hard=True, detail=detail
    )


NEW_KINDS = {
    "lowercase", "starts_with", "ends_with", "include_words", "bullet_count", "no_commas",
    "paragraph_count", "json_object", "quoted",
}


def test_every_new_kind_has_passing_and_failing_cases() -> None:
    models = get_args(get_args(Check)[0])  # Annotated[Union[...], Field] -> the union's members
    kinds = set(CHECK_KINDS)
    assert kinds >= NEW_KINDS and len(kinds) == len(NEW_KINDS) + 7
    covered = {(spec["kind"], passed) for spec, _, passed, _ in NEW_KIND_CASES}
    assert covered == {(k, p) for k in NEW_KINDS for p in (True, False)}
    for model in models:  # each kind's docstring is its user-facing documentation
        assert model.__doc__ and model.__doc__.strip()


def test_counting_bullets_and_paragraphs() -> None:
    assert count_bullets("- a\n\t- nested\n   10) ten\n\u2022 dot\n") == 4
    assert count_bullets("-\n- \n*\n1.\n") == 0  # a marker without text is not a bullet
    assert count_bullets("- - -\n___\n**bold** text") == 0


def test_bullets_inside_a_code_fence_do_not_count() -> None:
    yaml_block = "Steps:\n- one\n```yaml\n- a: 1\n- b: 2\n```\n- two\n"
    assert count_bullets(yaml_block) == 2
    # a longer closing run closes; a shorter run or another character does not
    assert count_bullets("````\n- x\n```\n- y\n~~~~\n- z\n````\n- w") == 1
    assert count_bullets("~~~\n- x\n~~~\n- y") == 1
    # a closing fence takes nothing after it but spaces; an unclosed fence runs to the end
    assert count_bullets("```\n- x\n``` not closed\n- y\n```  \n- z") == 1
    assert count_bullets("- a\n   ```\n- b\n- c") == 1
    # four spaces of indent is an indented code line, not a fence
    assert count_bullets("    ```\n- a\n- b") == 2
    assert count_paragraphs("") == 0
    assert count_paragraphs("one line") == 1
    assert count_paragraphs("a\r\n\r\nb") == 2
    assert count_paragraphs("a\n\u00a0\nb") == 2  # a no-break space alone is still blank


@pytest.mark.parametrize(
    "text",
    [
        "```" + " " * 50_000 + "x",
        "-" + " -" * 50_000 + " x",
        "- " + "\t" * 100_000,
        "\n \n" * 30_000,
        "\u201c" * 50_000 + "x",
    ],
)
def test_new_kinds_stay_fast_on_adversarial_text(text: str) -> None:
    # Model output is arbitrary: no check may backtrack quadratically on long runs.
    specs = [
        {"kind": "lowercase"},
        {"kind": "no_commas"},
        {"kind": "json_object"},
        {"kind": "quoted"},
        {"kind": "starts_with", "value": "\u201c\u201cx"},
        {"kind": "ends_with", "value": "- x"},
        {"kind": "include_words", "words": ["- - y"]},
        {"kind": "bullet_count", "min": 1},
        {"kind": "paragraph_count", "min": 1},
    ]
    start = time.perf_counter()
    for spec in specs:
        run_check(check(**spec), text)
    assert time.perf_counter() - start < 3.0


# --- malformed definitions ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "loc", "fragment"),
    [
        ({"kind": "upper_case"}, (), "does not match any of the expected tags"),
        ({}, (), "Unable to extract tag using discriminator 'kind'"),
        ({"kind": "starts_with"}, ("starts_with", "value"), "Field required"),
        ({"kind": "ends_with", "value": 3}, ("ends_with", "value"), "valid string"),
        ({"kind": "ends_with", "value": "   "}, ("ends_with", "value"),
         "must contain a non-whitespace character"),
        ({"kind": "include_words", "words": "river"}, ("include_words", "words"), "valid list"),
        ({"kind": "include_words", "words": []}, ("include_words", "words"), "at least 1 item"),
        ({"kind": "include_words", "words": ["ok", ""]}, ("include_words", "words", 1),
         "at least 1 character"),
        ({"kind": "include_words", "words": ["ok", " "]}, ("include_words", "words"),
         "words[1] must contain a non-whitespace character"),
        ({"kind": "include_words"}, ("include_words", "words"), "Field required"),
        ({"kind": "forbid_phrases", "phrases": ["ok", "  "]}, ("forbid_phrases", "phrases"),
         "phrases[1] must contain a non-whitespace character"),
        ({"kind": "ends_with", "value": "\u200b"}, ("ends_with", "value"),
         "must contain a non-whitespace character"),
        ({"kind": "forbid_phrases", "phrases": ["\ufeff"]}, ("forbid_phrases", "phrases"),
         "phrases[0] must contain a non-whitespace character"),
        ({"kind": "bullet_count", "min": 5, "max": 2}, ("bullet_count", "max"),
         "max (2) must be >= min (5)"),
        ({"kind": "bullet_count"}, ("bullet_count",), "bullet_count needs 'min', 'max' or both"),
        ({"kind": "bullet_count", "min": "3"}, ("bullet_count", "min"), "valid integer"),
        ({"kind": "bullet_count", "min": True}, ("bullet_count", "min"), "valid integer"),
        ({"kind": "bullet_count", "max": -1}, ("bullet_count", "max"), "greater than or equal"),
        ({"kind": "paragraph_count", "min": 3, "max": 1}, ("paragraph_count", "max"),
         "max (1) must be >= min (3)"),
        ({"kind": "paragraph_count", "max": None}, ("paragraph_count",),
         "paragraph_count needs 'min', 'max' or both"),
        ({"kind": "lowercase", "value": "x"}, ("lowercase", "value"), "Extra inputs"),
        ({"kind": "quoted", "hard": "yes"}, ("quoted", "hard"), "valid boolean"),
        ({"kind": "json_object", "id": None}, ("json_object", "id"), "valid string"),
        ({"kind": "no_commas", "id": "bad id"}, ("no_commas", "id"), "should match pattern"),
    ],
)
def test_malformed_definitions_name_the_field(spec: dict, loc: tuple, fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        _check.validate_python(spec)
    (error,) = info.value.errors(include_url=False)
    assert error["loc"] == loc
    assert fragment in error["msg"]


def test_checks_are_frozen() -> None:
    c = check(kind="starts_with", value="Hi")
    with pytest.raises(ValidationError):
        c.value = "Bye"  # type: ignore[misc]


# --- ids: optional, derived from kind and parameters ----------------------------------------


def test_derived_ids_are_stable_and_follow_the_parameters() -> None:
    bare = _check.validate_python
    # pinned: a derived id may be stored in results, so it must not change between releases
    assert bare({"kind": "lowercase"}).id == "lowercase"
    assert bare({"kind": "max_words", "value": 80}).id == "max_words-5b856e40"
    a = bare({"kind": "ends_with", "value": "stay safe."})
    b = bare({"kind": "ends_with", "value": "stay safe"})
    assert a.id != b.id and a.id.startswith("ends_with-") and len(a.id) == len("ends_with-") + 8
    # defaults written out, `hard` and `description` do not change what is checked
    assert bare({"kind": "forbid_regex", "pattern": "x"}).id == bare(
        {"kind": "forbid_regex", "pattern": "x", "ignore_case": False, "hard": False,
         "description": "why"}
    ).id
    assert bare({"kind": "forbid_regex", "pattern": "x", "ignore_case": True}).id != bare(
        {"kind": "forbid_regex", "pattern": "x"}
    ).id
    # an explicit id wins; the derived id stays out of the fields set, so a round trip
    # without unset fields derives it again
    assert bare({"id": "mine", "kind": "lowercase"}).id == "mine"
    c = bare({"kind": "include_words", "words": ["caf\u00e9"]})
    assert "id" not in c.model_fields_set
    assert "id" not in c.model_dump(exclude_unset=True)
    assert bare(c.model_dump(exclude_unset=True)) == c
    assert run_check(c, "caf\u00e9").check_id == c.id


def test_prompt_checks_of_one_kind_get_distinct_ids() -> None:
    record = json.loads(
        '{"prompt": "Say bye.", "checks": [{"kind": "lowercase"}, '
        '{"kind": "ends_with", "value": "stay safe."}, {"kind": "ends_with", "value": "bye"}]}'
    )
    checks = TypeAdapter(list[Check]).validate_python(record["checks"])
    assert len({c.id for c in checks}) == 3
    results = run_checks(checks, "ok, bye. stay safe.")
    assert [r.passed for r in results] == [True, True, False]


def test_constitution_with_derived_ids(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "name: t\nversion: 1\n"
        "principles: [{id: p, critique: c, revision: r}]\n"
        "checks:\n"
        "  - {kind: lowercase}\n"
        "  - {kind: ends_with, value: stay safe}\n"
        "  - {kind: ends_with, value: goodbye, hard: false}\n"
        "judge: {pairwise: Pick one.}\n",
        encoding="utf-8",
    )
    const = load_constitution(path)
    assert [c.id for c in const.checks][0] == "lowercase"
    assert len({c.id for c in const.checks}) == 3
    # showing and re-loading the constitution keeps the ids (written out) and the hash
    copy = tmp_path / "copy.yaml"
    copy.write_text(constitution_to_yaml(const), encoding="utf-8")
    assert load_constitution(copy).content_hash == const.content_hash


@pytest.mark.parametrize(
    ("checks_yaml", "line", "field", "fragment"),
    [
        # identical checks without ids derive the same id: still a duplicate
        ("  - {kind: lowercase}\n  - {kind: no_commas}\n  - {kind: lowercase}\n",
         7, "checks[2].id", "duplicate id 'lowercase' (first used on line 5)"),
        ("  - {kind: ends_with, value: bye}\n  - {kind: ends_with, value: bye, hard: false}\n",
         6, "checks[1].id", "(first used on line 5)"),
        # a derived id can collide with a written one too
        ("  - {id: lowercase, kind: no_commas}\n  - {kind: lowercase}\n",
         6, "checks[1].id", "duplicate id 'lowercase' (first used on line 5)"),
    ],
)
def test_duplicate_derived_ids_are_rejected(
    tmp_path: Path, checks_yaml: str, line: int, field: str, fragment: str
) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(
        "name: t\nversion: 1\nprinciples: [{id: p, critique: c, revision: r}]\nchecks:\n"
        + checks_yaml
        + "judge: {pairwise: Pick one.}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_constitution(path)
    assert (info.value.line, info.value.field) == (line, field)
    assert fragment in info.value.detail
    with pytest.raises(ValueError, match="duplicate check id"):
        _constitution([{"kind": "lowercase"}, {"kind": "lowercase"}])
