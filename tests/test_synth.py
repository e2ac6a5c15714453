"""Synthetic instruction prompts: deterministic, valid checks, no contradictions, shipped sets,
and the ``prompts synth`` command."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from selfimprove.checks import run_checks
from selfimprove.errors import ConfigError
from selfimprove.sources import PromptRecord, load_prompt_records
from selfimprove.synth import (
    HELDOUT_KINDS,
    INCOMPATIBLE,
    KINDS,
    PHRASINGS,
    TOPICS,
    compatible,
    phrasings,
    records_jsonl,
    synth_prompts,
    write_jsonl,
)

ROOT = Path(__file__).resolve().parent.parent
PACKAGED = ROOT / "selfimprove" / "data" / "prompts"


def kinds_of(record: PromptRecord) -> list[str]:
    return [c.kind for c in record.checks]


# --- the generator -------------------------------------------------------------------------


def test_same_seed_same_prompts_other_seed_differs() -> None:
    a, b = synth_prompts(80, seed=3), synth_prompts(80, seed=3)
    assert a == b
    assert records_jsonl(a) == records_jsonl(b)
    other = synth_prompts(80, seed=4)
    assert [r.prompt for r in other] != [r.prompt for r in a]
    assert [r.id for r in a] == [f"synth-3-{i}" for i in range(80)]


def test_prefix_is_stable_when_asking_for_more() -> None:
    # The first prompts do not depend on n: a bigger set extends a smaller one.
    assert synth_prompts(100, seed=0)[:30] == synth_prompts(30, seed=0)


def test_written_file_loads_back_with_valid_checks(tmp_path: Path) -> None:
    records = synth_prompts(120, seed=0)
    path = write_jsonl(records, tmp_path / "sub" / "p.jsonl")
    assert load_prompt_records(path) == records
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        assert list(row) == ["prompt", "id", "checks"]
        # explicit ids, so that a check keeps its id whatever its parameters
        assert all(c["id"] == c["kind"] for c in row["checks"])
        assert all("hard" not in c for c in row["checks"])


def test_prompts_unique_at_most_two_instructions_no_contradictions() -> None:
    records = synth_prompts(600, seed=7)
    assert len({r.prompt for r in records}) == len(records)
    counts = Counter(len(r.checks) for r in records)
    assert set(counts) == {1, 2}
    for record in records:
        kinds = kinds_of(record)
        assert len(set(kinds)) == len(kinds)
        if len(kinds) == 2:
            assert compatible(*kinds), record.prompt
            assert frozenset(kinds) not in INCOMPATIBLE
        if "lowercase" in kinds:
            values = [getattr(c, "value", "") for c in record.checks]
            assert all(str(v) == str(v).lower() for v in values), record.prompt
    # every kind shows up, as a first and as a second instruction
    assert {k for r in records for k in kinds_of(r)} == set(KINDS)
    assert {kinds_of(r)[1] for r in records if len(r.checks) == 2} == set(KINDS)


def test_contradictory_pairs_in_table() -> None:
    for pair in [("lowercase", "starts_with"), ("json_object", "bullet_count"),
                 ("json_object", "paragraph_count"), ("json_object", "quoted"),
                 ("json_object", "ends_with"), ("quoted", "ends_with")]:
        assert not compatible(*pair) and not compatible(*reversed(pair))
    assert not compatible("lowercase", "lowercase")
    assert compatible("lowercase", "ends_with")
    assert all(len(pair) == 2 and pair <= set(KINDS) for pair in INCOMPATIBLE)


def test_max_instructions_one() -> None:
    assert all(len(r.checks) == 1 for r in synth_prompts(50, max_instructions=1))


def test_each_kind_has_three_phrasings_and_forty_topics() -> None:
    assert len(TOPICS) >= 40 and len({t for t, _ in TOPICS}) == len(TOPICS)
    for kind in KINDS:
        assert len(set(phrasings(kind))) >= 3, kind
    for variant, texts in PHRASINGS.items():
        assert len(set(texts)) >= 3, variant
        # clauses are joined after "and" with a lowered first letter: none may start with "I"
        assert all(t[0].isupper() and not t.startswith("I ") for t in texts)


def test_kinds_and_exclude_kinds() -> None:
    only = synth_prompts(60, seed=1, kinds=["lowercase", "max_words"])
    assert {k for r in only for k in kinds_of(r)} == {"lowercase", "max_words"}
    rest = synth_prompts(200, seed=1, exclude_kinds=HELDOUT_KINDS)
    assert not {k for r in rest for k in kinds_of(r)} & set(HELDOUT_KINDS)
    both = synth_prompts(30, seed=1, kinds=["quoted", "no_commas", "lowercase"],
                         exclude_kinds=["lowercase"])
    assert {k for r in both for k in kinds_of(r)} <= {"quoted", "no_commas"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "n must be between 1 and 100000, got 0"),
        ({"n": 10**9}, "n must be between 1 and 100000, got 1000000000"),
        ({"n": 5, "kinds": ["shouting"]}, "unknown instruction kind 'shouting'"),
        ({"n": 5, "exclude_kinds": ["nope"]}, "unknown instruction kind 'nope'"),
        ({"n": 5, "kinds": ["quoted"], "exclude_kinds": ["quoted"]}, "no instruction kinds"),
        ({"n": 5000, "kinds": ["quoted"]}, "distinct prompts"),
        ({"n": 5, "max_instructions": 3}, "max_instructions"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        synth_prompts(**kwargs)


# --- each kind's check: a response that follows the instruction passes, one that does not fails


def _follows(record: PromptRecord) -> str:
    """A response that follows the record's single instruction."""
    (check,) = record.checks
    match check.kind:
        case "lowercase":
            return "rain falls when clouds get heavy."
        case "ends_with":
            return f"Rain falls when clouds get heavy. {check.value}"
        case "starts_with":
            return f"{check.value} rain falls when clouds get heavy."
        case "include_words":
            return "Rain falls. " + " ".join(check.words) + " matter here."
        case "bullet_count":
            return "Steps:\n" + "\n".join(f"- step {i}" for i in range(check.min))
        case "no_commas":
            return "Rain falls when clouds get heavy and cold."
        case "paragraph_count":
            return "\n\n".join(f"Paragraph {i} text." for i in range(check.min))
        case "max_words":
            return " ".join(["word"] * check.value)
        case "quoted":
            return '"Rain falls when clouds get heavy."'
        case "json_object":
            return '{"summary": "Rain falls when clouds get heavy."}'
    raise AssertionError(check.kind)


def _breaks(record: PromptRecord) -> str:
    """A response that ignores the record's single instruction."""
    (check,) = record.checks
    match check.kind:
        case "lowercase":
            return "Rain falls when clouds get heavy."
        case "ends_with":
            return f"{check.value} Rain falls when clouds get heavy."
        case "starts_with":
            return f"Rain falls when clouds get heavy. {check.value}"
        case "include_words":
            return "Rain falls when clouds get heavy."
        case "bullet_count":
            return "- only one step" if check.min > 1 else "No list at all."
        case "no_commas":
            return "Rain falls, when clouds get heavy."
        case "paragraph_count":
            return "One paragraph.\nStill the same paragraph."
        case "max_words":
            return " ".join(["word"] * (check.value + 1))
        case "quoted":
            return "'Rain falls when clouds get heavy.'"
        case "json_object":
            return 'Summary: {"summary": "rain"}'
    raise AssertionError(check.kind)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_check_passes_a_following_response_and_fails_another(kind: str) -> None:
    records = synth_prompts(40, seed=2, kinds=[kind], max_instructions=1)
    for record in records:
        assert kinds_of(record) == [kind]
        (follow,) = run_checks(record.checks, _follows(record))
        (broken,) = run_checks(record.checks, _breaks(record))
        assert follow.passed, (record.prompt, follow.detail)
        assert not broken.passed, (record.prompt, broken.detail)
        assert follow.check_id == kind


def test_lowercase_and_ends_with_can_both_be_followed() -> None:
    records = [r for r in synth_prompts(400, seed=5, kinds=["lowercase", "ends_with"])
               if len(r.checks) == 2]
    assert records
    for record in records:
        value = next(c.value for c in record.checks if c.kind == "ends_with")
        response = f"rain falls when clouds get heavy. {value}"
        assert all(r.passed for r in run_checks(record.checks, response)), record.prompt


# --- the shipped prompt sets -------------------------------------------------------------


def test_shipped_sets_are_the_generator_output() -> None:
    train = PACKAGED / "instructions.jsonl"
    heldout = PACKAGED / "instructions-heldout-kinds.jsonl"
    assert train.read_text(encoding="utf-8") == records_jsonl(
        synth_prompts(240, seed=0, exclude_kinds=HELDOUT_KINDS)
    )
    assert heldout.read_text(encoding="utf-8") == records_jsonl(
        synth_prompts(40, seed=1, kinds=HELDOUT_KINDS)
    )
    train_kinds = {k for r in load_prompt_records("instructions") for k in kinds_of(r)}
    heldout_records = load_prompt_records("instructions-heldout-kinds")
    assert train_kinds == set(KINDS) - set(HELDOUT_KINDS)
    assert {k for r in heldout_records for k in kinds_of(r)} == set(HELDOUT_KINDS)
    train_ids = {r.id for r in load_prompt_records("instructions")}
    assert not train_ids & {r.id for r in heldout_records}


def test_shipped_constitution_and_example_config() -> None:
    from selfimprove.config import RunConfig, load_config
    from selfimprove.constitution import load_constitution

    c = load_constitution("instructions")
    # no upper length bound of its own (results cannot come from truncation), only a floor
    assert [(k.kind, k.value) for k in c.checks] == [("min_words", 8)]
    assert "instruction" in c.judge.pairwise
    cfg = load_config(ROOT / "examples" / "configs" / "instructions-cpu.yaml", RunConfig)
    assert (cfg.critique.constitution, cfg.prompts.path) == ("instructions", "instructions")
    assert cfg.control.kind == "best_of_checks"
    # a checker decides: the failed rules are the critique, the checks rank the samples
    assert cfg.critique.critic == "checks"


def test_the_instruction_jobs_dpo_settings_reach_trl(tmp_path: Path) -> None:
    """RPO and LD-DPO are TRL options: the config must build a DPOConfig that carries them."""
    from trl import DPOConfig

    from selfimprove.config import RunConfig, load_config
    from selfimprove.training.common import trl_args

    cfg = load_config(ROOT / "examples" / "configs" / "instructions-cpu.yaml", RunConfig)
    assert cfg.schedule.methods == ["dpo"]
    built = DPOConfig(**trl_args(cfg.dpo, tmp_path, progress=False))
    assert (built.loss_type, built.ld_alpha) == (["sigmoid", "sft"], 0.5)


# --- the command -------------------------------------------------------------------------


def _args(**overrides: Any) -> argparse.Namespace:
    values: dict[str, Any] = {"n": 12, "seed": 0, "out": None, "kinds": None,
                              "exclude_kinds": None, "force": False}
    values.update(overrides)
    return argparse.Namespace(**values)


def test_run_synth_writes_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from selfimprove.cli.prompts import run_synth

    out = tmp_path / "p.jsonl"
    assert run_synth(_args(out=out, seed=4, exclude_kinds="quoted, no_commas")) == 0
    assert out.read_text(encoding="utf-8") == records_jsonl(
        synth_prompts(12, seed=4, exclude_kinds=HELDOUT_KINDS)
    )
    assert f"wrote 12 prompts to {out}" in capsys.readouterr().out
    assert run_synth(_args(out=out, kinds="quoted", force=True)) == 0
    assert {k for r in load_prompt_records(out) for k in kinds_of(r)} == {"quoted"}


@pytest.mark.parametrize(
    ("overrides", "flag"),
    [
        ({"n": 0}, "--n"),
        ({"n": 100_001}, "--n"),
        ({"kinds": "lowercase,shouting"}, "--kinds"),
        ({"kinds": " , "}, "--kinds"),
        ({"exclude_kinds": "nope"}, "--exclude-kinds"),
        ({"kinds": "quoted", "exclude_kinds": "quoted"}, "--exclude-kinds"),
        ({"n": 5000, "kinds": "quoted"}, "--n"),
    ],
)
def test_run_synth_refuses_bad_args(tmp_path: Path, overrides: dict[str, Any], flag: str) -> None:
    from selfimprove.cli.prompts import run_synth

    out = tmp_path / "p.jsonl"
    with pytest.raises(ConfigError) as info:
        run_synth(_args(out=out, **overrides))
    assert info.value.path == flag
    assert not out.exists()


@pytest.mark.parametrize("name", ["p.txt", "p", "p.jsonl.gz", "existing_dir.jsonl"])
def test_run_synth_writes_only_what_reads_back_with_its_checks(tmp_path: Path,
                                                                name: str) -> None:
    """Other names are read back as plain text, without the checks; a directory is no file."""
    from selfimprove.cli.prompts import run_synth

    out = tmp_path / name
    if name == "existing_dir.jsonl":  # a suffix that passes, so the directory is what fails
        out.mkdir()
    with pytest.raises(ConfigError) as info:
        run_synth(_args(out=out))
    assert info.value.path == str(out)
    assert "--out" in info.value.detail
    assert not out.exists() or out.is_dir() and not any(out.iterdir())


def test_main_prompts_synth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from selfimprove import cli

    out = tmp_path / "p.jsonl"
    assert cli.main(["prompts", "synth", "--n", "7", "--seed", "2", "--out", str(out),
                     "--exclude-kinds", "quoted,no_commas"]) == 0
    assert len(load_prompt_records(out)) == 7
    assert cli.main(["prompts", "synth", "--n", "0", "--out", str(out)]) == 2
    assert "--n" in capsys.readouterr().err
    assert cli.main(["prompts", "synth", "--n", "3", "--kinds", "shouting",
                     "--out", str(out)]) == 2
    assert "--kinds" in capsys.readouterr().err
    # an existing file is a user's prompts until --force says otherwise
    before = out.read_bytes()
    assert cli.main(["prompts", "synth", "--n", "3", "--out", str(out)]) == 2
    assert "--out exists" in capsys.readouterr().err and out.read_bytes() == before
    assert cli.main(["prompts", "synth", "--n", "3", "--out", str(out), "--force"]) == 0
    assert len(load_prompt_records(out)) == 3
