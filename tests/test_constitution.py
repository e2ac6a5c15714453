"""Constitutions: shipped files, `extends`, errors with file/line/field, schema, CLI."""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from selfimprove.checks import run_checks
from selfimprove.cli.constitution import register
from selfimprove.constitution import (
    ENV_VAR,
    Constitution,
    constitution_json_schema,
    constitution_to_yaml,
    list_constitutions,
    load_constitution,
    search_dirs,
)
from selfimprove.errors import ConfigError, ConfigErrors
from selfimprove.types import passes

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "constitutions"
MALFORMED = Path(__file__).resolve().parent / "data" / "malformed"
SHIPPED_NAMES = sorted(p.stem for p in SHIPPED.glob("*.yaml"))


@pytest.fixture(autouse=True)
def _no_extra_dirs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


JUDGE = "judge: {pairwise: Pick one., pointwise: [{points: 1, criterion: Good.}]}\n"


# --- shipped constitutions ---------------------------------------------------------------


def test_shipped_set() -> None:
    assert {"hhh", "concise", "customer-support", "base"} <= set(SHIPPED_NAMES)
    assert search_dirs()[-1] == SHIPPED


@pytest.mark.parametrize("name", SHIPPED_NAMES)
def test_shipped_constitution_loads(name: str) -> None:
    c = load_constitution(name)
    assert c.name == name
    assert c.source == SHIPPED / f"{name}.yaml"
    assert c.description
    assert c.principles and c.judge.pairwise.strip() and c.judge.pointwise
    assert len(c.content_hash) == 16
    assert load_constitution(SHIPPED / f"{name}.yaml").content_hash == c.content_hash
    # every shipped check runs on some text without raising
    assert len(run_checks(c, "Paris is the capital of France.")) == len(c.checks)


def test_shipped_contents() -> None:
    hhh = load_constitution("hhh")
    assert 6 <= len(hhh.principles) <= 8
    assert all(not c.hard for c in hhh.checks)
    concise = load_constitution("concise")
    hard = {c.kind for c in concise.checks if c.hard}
    assert {"max_words", "forbid_phrases", "forbid_regex"} <= hard
    filler = "Great question! The capital of France is Paris. I hope this helps!"
    assert not passes(run_checks(concise, filler))
    assert passes(run_checks(concise, "Paris."))
    support = load_constitution("customer-support")
    good = (
        "Hi Sam, I'm sorry your order arrived damaged. I can ask our billing team to review a "
        "refund. Next: reply with a photo of the box and we will confirm within two days."
    )
    assert passes(run_checks(support, good))
    promise = "Hello! We will refund you in full today."
    failed = {r.check_id for r in run_checks(support, promise) if not r.passed}
    assert failed == {"no_refund_promise"}
    assert not passes(run_checks(support, "Send me your password and the order number."))


def test_list_constitutions_shipped() -> None:
    listed = {name: (path, desc) for name, path, desc in list_constitutions()}
    assert set(listed) == set(SHIPPED_NAMES)
    assert listed["hhh"] == (
        SHIPPED / "hhh.yaml",
        "Helpful, honest and harmless assistant behaviour (general purpose).",
    )


def test_unknown_name_lists_known() -> None:
    with pytest.raises(ConfigError) as info:
        load_constitution("no-such-constitution")
    assert "no constitution named 'no-such-constitution'" in str(info.value)
    assert "concise" in str(info.value) and ENV_VAR in str(info.value)


def test_env_dirs_searched_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    extra1, extra2 = tmp_path / "one", tmp_path / "two"
    extra1.mkdir()
    extra2.mkdir()
    write(extra2 / "mine.yml", "name: mine\nversion: 2\ndescription: Mine.\nextends: base\n")
    write(extra1 / "concise.yaml", "name: concise\nversion: local\nextends: hhh\n")
    monkeypatch.setenv(ENV_VAR, f"{extra1}{os.pathsep}{extra2}")
    assert search_dirs() == [extra1, extra2, SHIPPED]
    mine = load_constitution("mine")
    assert (mine.version, mine.source) == (2, extra2 / "mine.yml")
    assert load_constitution("concise").version == "local"  # shadows the shipped one
    listed = {name: path for name, path, _ in list_constitutions()}
    assert listed["mine"] == extra2 / "mine.yml"
    assert listed["concise"] == extra1 / "concise.yaml"


# --- extends -------------------------------------------------------------------------------


def test_extends_override_and_inherit(tmp_path: Path) -> None:
    write(
        tmp_path / "parent.yaml",
        """
        name: parent
        version: 1
        description: The parent.
        principles:
          - {id: a, critique: parent a, revision: parent a rev}
          - {id: b, critique: parent b, revision: parent b rev, weight: 3}
        checks:
          - {id: short, kind: max_words, value: 100}
          - {id: polite, kind: forbid_phrases, phrases: [shut up]}
        judge: {pairwise: parent pairwise, pointwise: [{points: 2, criterion: parent}]}
        """,
    )
    write(
        tmp_path / "child.yaml",
        """
        name: child
        version: 2
        extends: parent
        principles:
          - {id: c, critique: child c, revision: child c rev}
          - {id: a, critique: child a, revision: child a rev, weight: 0.5}
        checks:
          - {id: short, kind: max_words, value: 10, hard: false}
        """,
    )
    child = load_constitution(tmp_path / "child.yaml")
    assert (child.name, child.version, child.description) == ("child", 2, "The parent.")
    assert [(p.id, p.critique, p.weight) for p in child.principles] == [
        ("a", "child a", 0.5),  # overridden in place
        ("b", "parent b", 3.0),  # inherited
        ("c", "child c", 1.0),  # added
    ]
    assert [(c.id, c.kind, c.hard) for c in child.checks] == [
        ("short", "max_words", False),
        ("polite", "forbid_phrases", True),
    ]
    assert child.checks[0].value == 10
    assert child.judge.pairwise == "parent pairwise"

    # grandchild by relative path, with its own judge and description
    (tmp_path / "sub").mkdir()
    write(
        tmp_path / "sub" / "grandchild.yaml",
        """
        name: grandchild
        version: 3
        description: Third generation.
        extends: ../child.yaml
        judge: {pairwise: own, pointwise: [{points: 1, criterion: own}]}
        """,
    )
    grandchild = load_constitution(tmp_path / "sub" / "grandchild.yaml")
    assert [p.id for p in grandchild.principles] == ["a", "b", "c"]
    assert grandchild.judge.pairwise == "own"
    assert grandchild.description == "Third generation."
    assert grandchild.content_hash != child.content_hash


PARENT = """
    name: parent
    version: 1
    principles:
      - {id: a, critique: parent a, revision: parent a rev}
      - {id: b, critique: parent b, revision: parent b rev}
    checks:
      - {id: short, kind: max_words, value: 100}
      - {id: polite, kind: forbid_phrases, phrases: [shut up]}
    """ + JUDGE


def test_extends_remove_leaves_out_parent_entries(tmp_path: Path) -> None:
    write(tmp_path / "parent.yaml", PARENT)
    write(tmp_path / "child.yaml", """
        name: child
        version: 1
        extends: parent
        remove: {principles: [a], checks: [short]}
        checks:
          - {id: tiny, kind: max_words, value: 5}
        """)
    child = load_constitution(tmp_path / "child.yaml")
    assert [p.id for p in child.principles] == ["b"]
    assert [c.id for c in child.checks] == ["polite", "tiny"]
    # a grandchild inherits the removal, and may bring a removed id back as its own
    write(tmp_path / "grandchild.yaml", """
        name: grandchild
        version: 1
        extends: child
        checks:
          - {id: short, kind: max_words, value: 50}
        """)
    grandchild = load_constitution(tmp_path / "grandchild.yaml")
    assert [c.id for c in grandchild.checks] == ["polite", "tiny", "short"]
    # removing everything but adding a principle is a constitution still
    write(tmp_path / "replaced.yaml", """
        name: replaced
        version: 1
        extends: parent
        remove: {principles: [a, b]}
        principles:
          - {id: c, critique: own c, revision: own c rev}
        """)
    assert [p.id for p in load_constitution(tmp_path / "replaced.yaml").principles] == ["c"]


@pytest.mark.parametrize(
    ("body", "line", "field", "message"),
    [
        ("extends: parent\nremove:\n  checks: [shrot]\n", 5, "remove.checks[0]",
         "the parent 'parent' has no check 'shrot' (did you mean 'short'?)"),
        ("extends: parent\nremove:\n  principles: [a, zzz]\n", 5, "remove.principles[1]",
         "the parent 'parent' has no principle 'zzz' (its principles: a, b)"),
        ("extends: parent\nremove:\n  checks: [short]\nchecks:\n"
         "  - {id: short, kind: max_words, value: 5}\n", 5, "remove.checks[0]",
         "'short' is both removed and defined in this file"),
        ("extends: parent\nremove: {principles: [a, b]}\n", 4, "remove.principles",
         "removes every principle of the parent and adds none"),
        ("remove: {checks: [short]}\nprinciples:\n  - {id: a, critique: c, revision: r}\n"
         + JUDGE, 3, "remove", "it needs `extends`"),
        ("extends: parent\nremove: {check: [short]}\n", 4, "remove.check",
         "unknown key"),
    ],
)
def test_extends_remove_errors_are_located(tmp_path: Path, body: str, line: int, field: str,
                                           message: str) -> None:
    write(tmp_path / "parent.yaml", PARENT)
    path = tmp_path / "child.yaml"
    path.write_text("name: child\nversion: 1\n" + body, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_constitution(path)
    assert (err.value.path, err.value.line, err.value.field) == (str(path), line, field)
    assert message in err.value.detail


def test_extends_shipped_by_name_from_elsewhere(tmp_path: Path) -> None:
    write(tmp_path / "mine.yaml", "name: mine\nversion: 1\nextends: concise\n")
    mine = load_constitution(tmp_path / "mine.yaml")
    concise = load_constitution("concise")
    assert mine.principles == concise.principles and mine.checks == concise.checks


def test_extends_merges_judge_field_by_field(tmp_path: Path) -> None:
    base = load_constitution("base")
    assert base.judge.pointwise  # what the child below must inherit
    write(
        tmp_path / "pairwise_only.yaml",
        """
        name: pairwise-only
        version: 1
        extends: base
        judge:
          pairwise: Pick the shorter correct response.
        """,
    )
    child = load_constitution(tmp_path / "pairwise_only.yaml")
    assert child.judge.pairwise == "Pick the shorter correct response."
    assert child.judge.pointwise == base.judge.pointwise

    rubric = "judge:\n  pointwise: [{points: 2, criterion: Short.}]\n"
    write(tmp_path / "pointwise_only.yaml", "name: p\nversion: 1\nextends: base\n" + rubric)
    child = load_constitution(tmp_path / "pointwise_only.yaml")
    assert child.judge.pairwise == base.judge.pairwise
    assert [(i.points, i.criterion) for i in child.judge.pointwise] == [(2, "Short.")]

    # an invalid override is still reported with the child's file, line and field
    write(tmp_path / "bad.yaml", "name: b\nversion: 1\nextends: base\njudge:\n  pairwise: ''\n")
    with pytest.raises(ConfigError) as info:
        load_constitution(tmp_path / "bad.yaml")
    err = info.value
    assert (Path(err.path).name, err.line, err.field) == ("bad.yaml", 5, "judge.pairwise")
    assert "at least 1 character" in err.detail


def test_pointwise_rubric_is_optional(tmp_path: Path) -> None:
    path = write(
        tmp_path / "pairwise_judge.yaml",
        """
        name: t
        version: 1
        principles:
          - {id: p, critique: c, revision: r}
        judge:
          pairwise: Pick one.
        """,
    )
    c = load_constitution(path)
    assert c.judge.pointwise is None and c.judge.max_points == 0
    text = constitution_to_yaml(c)
    assert "pointwise" not in text
    copy = load_constitution(write(tmp_path / "copy.yaml", text))
    assert copy.content_hash == c.content_hash

    # pairwise is what cannot be left out (without `extends`)
    write(
        tmp_path / "no_pairwise.yaml",
        "name: t\nversion: 1\nprinciples: [{id: p, critique: c, revision: r}]\n"
        "judge:\n  pointwise: [{points: 1, criterion: Good.}]\n",
    )
    with pytest.raises(ConfigError) as info:
        load_constitution(tmp_path / "no_pairwise.yaml")
    err = info.value
    assert (err.line, err.field, err.detail) == (4, "judge.pairwise", "Field required")
    assert "no_pairwise.yaml:4: field 'judge.pairwise'" in str(err)


def test_extends_cycle_error(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "name: a\nversion: 1\nextends: b\n")
    write(tmp_path / "b.yaml", "name: b\nversion: 1\nextends: c.yaml\n")
    write(tmp_path / "c.yaml", "name: c\nversion: 1\n\nextends: a\n")
    with pytest.raises(ConfigError) as info:
        load_constitution(tmp_path / "a.yaml")
    err = info.value
    assert (Path(err.path).name, err.line, err.field) == ("c.yaml", 4, "extends")
    assert err.detail == "extends cycle: a.yaml -> b.yaml -> c.yaml -> a.yaml"


def test_error_in_parent_names_parent_file(tmp_path: Path) -> None:
    write(tmp_path / "parent.yaml", "name: p\nversion: 1\nprinciples: []\n" + JUDGE)
    write(tmp_path / "child.yaml", "name: c\nversion: 1\nextends: parent\n")
    with pytest.raises(ConfigError) as info:
        load_constitution(tmp_path / "child.yaml")
    assert (Path(info.value.path).name, info.value.line, info.value.field) == (
        "parent.yaml",
        3,
        "principles",
    )


# --- malformed files: exact errors ---------------------------------------------------------

# file -> (file named in the error, line, field, fragment of the message)
MALFORMED_CASES: dict[str, tuple[str | None, int, str | None, str]] = {
    "unknown_top_key.yaml": (None, 4, "colour", "unknown key (not allowed here)"),
    "unknown_principle_key.yaml": (None, 8, "principles[0].wieght", "unknown key"),
    "misspelt_required_key.yaml": (
        None, 7, "principles[0].revison",
        "unknown key (did you mean 'revision'?)",
    ),
    "missing_name.yaml": (None, 2, "name", "Field required"),
    "missing_principles.yaml": (None, 2, "principles", "missing: at least one principle"),
    "empty_principles.yaml": (None, 4, "principles", "at least one principle is required"),
    "missing_critique.yaml": (None, 5, "principles[0].critique", "Field required"),
    "negative_weight.yaml": (None, 11, "principles[1].weight", "greater than 0"),
    "duplicate_principle_id.yaml": (
        None, 11, "principles[2].id", "duplicate id 'honest' (first used on line 5)"
    ),
    "bad_principle_id.yaml": (None, 5, "principles[0].id", "not a valid id: use ASCII letters"),
    "unknown_check_kind.yaml": (None, 8, "checks[0].kind", "unknown value 'max_tokens'"),
    "check_missing_kind.yaml": (None, 7, "checks[0].kind", "missing (it selects the type"),
    "max_words_not_int.yaml": (None, 9, "checks[0].value", "valid integer"),
    "hard_not_bool.yaml": (None, 10, "checks[0].hard", "valid boolean"),
    "bad_regex.yaml": (None, 12, "checks[1].pattern", "invalid regular expression: missing )"),
    "duplicate_check_id.yaml": (
        None, 10, "checks[1].id", "duplicate id 'length' (first used on line 7)"
    ),
    "phrases_wrong_type.yaml": (None, 9, "checks[0].phrases", "valid list"),
    "checks_not_list.yaml": (None, 6, "checks", "valid list"),
    "duplicate_yaml_key.yaml": (
        None, 7, "description", "duplicate key 'description' (first on line 4)"
    ),
    "yaml_syntax_error.yaml": (None, 7, None, "invalid YAML"),
    "python_tag.yaml": (None, 2, None, "could not determine a constructor"),
    "top_level_list.yaml": (None, 1, None, "expected a mapping at the top level, got list"),
    "empty_file.yaml": (None, 1, None, "expected a mapping at the top level, got empty"),
    "version_float.yaml": (None, 3, "version", "must be an integer or a string, got float"),
    "missing_judge.yaml": (None, 2, "judge", "missing: a judge rubric is required"),
    "empty_pairwise.yaml": (None, 7, "judge.pairwise", "at least 1 character"),
    "blank_critique.yaml": (None, 5, "principles[0].critique", "must not be blank"),
    "weight_infinite.yaml": (None, 5, "principles[0].weight", "finite number"),
    "word_bounds_crossed.yaml": (
        None, 6, "checks", "at least 100 words and at most 20: no response can pass both"
    ),
    "pointwise_points_zero.yaml": (None, 11, "judge.pointwise[1].points", "greater than 0"),
    "example_breaks_a_check.yaml": (
        None, 12, "examples[1].response", "the example's response fails its hard checks: short"
    ),
    "example_breaks_its_own_check.yaml": (
        None, 9, "examples[0].response", "fails its hard checks: lowercase"
    ),
    "example_missing_response.yaml": (None, 7, "examples[0].response", "Field required"),
    "extends_missing.yaml": (None, 4, "extends", "parent constitution 'no-such-parent' not found"),
    "extends_self.yaml": (None, 4, "extends", "extends cycle: extends_self.yaml -> extends_self"),
    "extends_cycle_a.yaml": (
        "extends_cycle_b.yaml",
        5,
        "extends",
        "extends cycle: extends_cycle_a.yaml -> extends_cycle_b.yaml -> extends_cycle_a.yaml",
    ),
    "extends_cycle_b.yaml": (
        "extends_cycle_a.yaml",
        4,
        "extends",
        "extends cycle: extends_cycle_b.yaml -> extends_cycle_a.yaml -> extends_cycle_b.yaml",
    ),
}


def test_every_malformed_file_has_a_case() -> None:
    assert sorted(p.name for p in MALFORMED.glob("*.yaml")) == sorted(MALFORMED_CASES)
    assert len(MALFORMED_CASES) >= 15


@pytest.mark.parametrize("filename", sorted(MALFORMED_CASES))
def test_malformed_exact_error(filename: str) -> None:
    error_file, line, field, fragment = MALFORMED_CASES[filename]
    with pytest.raises(ConfigError) as info:
        load_constitution(MALFORMED / filename)
    err = info.value
    assert Path(err.path).name == (error_file or filename)
    assert (err.line, err.field) == (line, field)
    assert fragment in err.detail
    # the one-line message carries all of it
    where = f"{Path(err.path).name}:{line}: " + (f"field '{field}': " if field else "")
    assert where in str(err)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_constitution(MALFORMED / "does-not-exist.yaml")
    with pytest.raises(ConfigError, match="is a directory, not a constitution file"):
        load_constitution(MALFORMED)


def test_non_utf8_constitution_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: x\nversion: 1\ndescription: caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_constitution(path)
    assert info.value.line == 3
    assert str(info.value).startswith(f"{path}:3: not UTF-8 text")


def test_constitution_is_never_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    bad = write(
        tmp_path / "evil.yaml",
        f"""
        name: !!python/object/apply:os.system ["touch {marker}"]
        version: 1
        """,
    )
    with pytest.raises(ConfigError, match="could not determine a constructor"):
        load_constitution(bad)
    assert not marker.exists()


def test_model_rejects_duplicate_ids_in_python() -> None:
    with pytest.raises(ValueError, match="duplicate principle id 'p'"):
        Constitution.model_validate(
            {
                "name": "t",
                "version": 1,
                "principles": [
                    {"id": "p", "critique": "c", "revision": "r"},
                    {"id": "p", "critique": "c2", "revision": "r2"},
                ],
                "judge": {"pairwise": "x", "pointwise": [{"points": 1, "criterion": "y"}]},
            }
        )


# --- model behaviour -----------------------------------------------------------------------


def test_content_hash_is_canonical(tmp_path: Path) -> None:
    one = write(
        tmp_path / "one.yaml",
        """
        name: t
        version: 1
        principles:
          - {id: p, critique: c, revision: r}
        """
        + JUDGE,
    )
    # same content, different key order, explicit defaults and comments
    two = write(
        tmp_path / "two.yaml",
        """
        # a comment
        judge:
          pointwise: [{criterion: Good., points: 1}]
          pairwise: Pick one.
        principles:
          - {revision: r, critique: c, id: p, weight: 1.0}
        checks: []
        version: 1
        name: t
        """,
    )
    three = write(tmp_path / "three.yaml", one.read_text().replace("revision: r", "revision: R"))
    h1, h2, h3 = (load_constitution(p).content_hash for p in (one, two, three))
    assert h1 == h2 != h3
    assert all(len(h) == 16 and int(h, 16) >= 0 for h in (h1, h3))


def test_examples_are_inherited_or_replaced_and_hash_only_when_present(tmp_path: Path) -> None:
    base = """
        name: parent
        version: 1
        principles:
          - {id: p, critique: c, revision: r}
        examples:
          - {prompt: Say hi in lowercase., response: hi there., checks: [{kind: lowercase}]}
        """ + JUDGE
    parent = write(tmp_path / "parent.yaml", base)
    inherit = write(tmp_path / "inherit.yaml", "name: child\nversion: 1\nextends: parent\n")
    replace = write(tmp_path / "replace.yaml", "name: child\nversion: 1\nextends: parent\n"
                    "examples: [{prompt: Count to two., response: 'One, two.'}]\n")
    drop = write(tmp_path / "drop.yaml", "name: child\nversion: 1\nextends: parent\n"
                 "examples: []\n")
    assert [e.response for e in load_constitution(parent).examples] == ["hi there."]
    assert load_constitution(inherit).examples == load_constitution(parent).examples
    assert [e.prompt for e in load_constitution(replace).examples] == ["Count to two."]
    assert load_constitution(drop).examples == []
    # No examples: no key in the content, so hashes of constitutions without them are unchanged.
    plain = write(tmp_path / "plain.yaml", base.split("examples:")[0] + JUDGE)
    explicit = write(tmp_path / "explicit.yaml", plain.read_text() + "examples: []\n")
    assert "examples" not in load_constitution(plain).content()
    assert load_constitution(plain).content_hash == load_constitution(explicit).content_hash
    assert load_constitution(parent).content_hash != load_constitution(plain).content_hash


@pytest.mark.parametrize("name", SHIPPED_NAMES)
def test_show_yaml_round_trips(name: str, tmp_path: Path) -> None:
    c = load_constitution(name)
    text = constitution_to_yaml(c)
    assert "extends" not in text
    copy = load_constitution(write(tmp_path / "copy.yaml", text))
    assert copy.content_hash == c.content_hash
    assert copy.model_dump() == c.model_dump()


def _weighted(weights: list[float]) -> Constitution:
    return Constitution.model_validate(
        {
            "name": "w",
            "version": 1,
            "principles": [
                {"id": f"p{i}", "critique": "c", "revision": "r", "weight": w}
                for i, w in enumerate(weights)
            ],
            "judge": {"pairwise": "x", "pointwise": [{"points": 1, "criterion": "y"}]},
        }
    )


def test_sample_principles_weighted_without_replacement() -> None:
    c = _weighted([8.0, 1.0, 1.0])
    rng = random.Random(0)
    firsts = Counter()
    for _ in range(2000):
        drawn = c.sample_principles(2, rng)
        assert len(drawn) == 2 and drawn[0].id != drawn[1].id
        firsts[drawn[0].id] += 1
    # p0 is drawn first with probability 0.8; the others 0.1 each
    assert 1500 < firsts["p0"] < 1700
    assert 130 < firsts["p1"] < 270 and 130 < firsts["p2"] < 270
    everything = c.sample_principles(10, random.Random(1))
    assert sorted(p.id for p in everything) == ["p0", "p1", "p2"]
    assert c.sample_principles(0, rng) == []
    assert [p.id for p in c.sample_principles(3, random.Random(5))] == [
        p.id for p in c.sample_principles(3, random.Random(5))
    ]
    with pytest.raises(ValueError):
        c.sample_principles(-1, rng)


# --- JSON schema ---------------------------------------------------------------------------


def test_published_schema_is_current() -> None:
    published = json.loads((SHIPPED / "schema.json").read_text(encoding="utf-8"))
    assert published == constitution_json_schema(), (
        "constitutions/schema.json is stale: "
        "python -m selfimprove.constitution --schema > constitutions/schema.json"
    )


def test_schema_describes_the_vocabulary() -> None:
    schema = constitution_json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"name", "version"}
    kinds = {
        d["properties"]["kind"]["const"]
        for name, d in schema["$defs"].items()
        if "kind" in d.get("properties", {})
    }
    assert kinds == {
        "max_words", "min_words", "max_chars", "max_sentences",
        "forbid_regex", "require_regex", "forbid_phrases",
        "lowercase", "starts_with", "ends_with", "include_words", "bullet_count", "no_commas",
        "paragraph_count", "json_object", "quoted",
    }


def test_schema_flags_what_validation_refuses() -> None:
    # Editors validate against the schema: blank texts and a count with no bound must be
    # flagged there too, not only by `constitution validate`.
    defs = constitution_json_schema()["$defs"]
    for kind in ("BulletCount", "ParagraphCount"):
        assert defs[kind]["anyOf"] == [{"required": ["min"]}, {"required": ["max"]}]
    blank_refusing = [defs["StartsWith"]["properties"]["value"],
                      defs["EndsWith"]["properties"]["value"],
                      defs["IncludeWords"]["properties"]["words"]["items"],
                      defs["ForbidPhrases"]["properties"]["phrases"]["items"]]
    for prop in blank_refusing:
        assert re.search(prop["pattern"], " \t") is None
        assert re.search(prop["pattern"], " ok") is not None


# --- CLI -----------------------------------------------------------------------------------


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="selfimprove")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_validate(capsys: pytest.CaptureFixture[str]) -> None:
    good = str(SHIPPED / "concise.yaml")
    bad = str(MALFORMED / "negative_weight.yaml")
    assert _cli(["constitution", "validate", good, "hhh"]) == 0
    out, err = capsys.readouterr()
    concise, hhh = load_constitution("concise"), load_constitution("hhh")
    assert out.splitlines() == [
        f"ok: {good} (concise v1, {len(concise.principles)} principles, "
        f"{len(concise.checks)} checks)",
        f"ok: hhh (hhh v1, {len(hhh.principles)} principles, {len(hhh.checks)} checks)",
    ]
    assert err == ""

    # errors go to stderr, every file is still checked, exit code 1
    assert _cli(["constitution", "validate", bad, good]) == 1
    out, err = capsys.readouterr()
    assert out.startswith(f"ok: {good} ")
    assert err.strip() == (
        f"{bad}:11: field 'principles[1].weight': Input should be greater than 0"
    )


def test_cli_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["constitution", "list"]) == 0
    out, _ = capsys.readouterr()
    for name in SHIPPED_NAMES:
        assert name in out
    assert "customer-support" in out and "version" in out

    assert _cli(["constitution", "show", "concise"]) == 0
    out, _ = capsys.readouterr()
    c = load_constitution("concise")
    assert out.startswith(f"# concise v1 from {c.source}, resolved; content hash {c.content_hash}")
    assert "max_80_words" in out and "extends" not in out.split("\n", 1)[1]

    assert _cli(["constitution", "show", "no-such-thing"]) == 1
    _, err = capsys.readouterr()
    assert "no constitution named 'no-such-thing'" in err


def test_a_shipped_parent_named_as_a_file_gets_its_name_as_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path / "mine.yaml", "name: mine\nversion: 1\nextends: concise.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_constitution(path)
    assert err.value.field == "extends"
    assert err.value.detail.endswith("named without a path: extends: concise")


def test_a_path_that_is_not_a_regular_file_says_so(tmp_path: Path) -> None:
    if not Path("/dev/null").exists():
        pytest.skip("no /dev/null here")
    with pytest.raises(ConfigError, match="not a regular file"):
        load_constitution("/dev/null")
    with pytest.raises(ConfigError, match="file not found"):
        load_constitution(tmp_path / "absent.yaml")


def test_every_error_of_a_file_is_listed_in_file_order(tmp_path):
    """Fixing a file one rerun at a time is slow: each error on its own line, top to bottom."""
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: bad\nversion: 1\nprinciples:\n  - id: p1\n    critique: c\n    revison: r\n"
        "checks:\n  - {id: a, kind: max_words, valeu: 3}\n  - {id: b, kind: max_words, "
        "value: x}\n  - {id: c, kind: nope}\n")
    with pytest.raises(ConfigErrors) as info:
        load_constitution(path)
    assert [(e.line, e.field) for e in info.value.errors] == [
        (6, "principles[0].revison"), (8, "checks[0].valeu"), (9, "checks[1].value"),
        (10, "checks[2].kind")]
    assert str(info.value).splitlines()[0] == (
        f"{path}:6: field 'principles[0].revison': unknown key (did you mean 'revision'?)")
    assert info.value.line == 6  # the error's own place is the first one


def test_a_number_yaml_reads_as_text_gets_a_hint(tmp_path):
    """PyYAML (YAML 1.1) reads 1e3 as the string '1e3': the error says so."""
    path = tmp_path / "e.yaml"
    path.write_text("name: e\nversion: 1\nprinciples:\n  - {id: p, critique: c, revision: r}\n"
                    "checks:\n  - {id: a, kind: max_words, value: 1e3}\n"
                    "judge: {pairwise: Pick one., pointwise: [{points: 1, criterion: Brief.}]}\n")
    with pytest.raises(ConfigError) as info:
        load_constitution(path)
    assert (info.value.line, info.value.field) == (6, "checks[0].value")
    assert info.value.detail.endswith("(YAML read '1e3' as text, not a number: write 1000)")
    path.write_text(path.read_text().replace("1e3", "1000"))
    assert load_constitution(path).checks[0].value == 1000
