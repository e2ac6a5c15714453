"""Constitutions: principles, executable checks and a judge rubric, loaded from YAML.

A constitution file is data, never code (``yaml.safe_load`` semantics, no eval). It may
``extends`` a parent: the child's principles and checks replace the parent's ones with the same
``id`` and add new ones, and ``remove`` leaves out the parent's ones it names by id; the
``judge`` fields it sets replace the parent's ones field by field;
everything else is inherited unless the child sets it. Every error is a
:class:`~selfimprove.errors.ConfigError` naming the file, the line and the field.

Constitutions are found by name in ``$SELFIMPROVE_CONSTITUTIONS`` (directories separated by
``os.pathsep``, searched first) and then in the ``constitutions/`` directory shipped with the
project (installed as the package ``selfimprove.constitutions``); or loaded by path.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from selfimprove.checks import Check
from selfimprove.errors import ConfigError
from selfimprove.pydantic_errors import ID_PATTERN, one_edit_apart
from selfimprove.yamlio import line_of, load_model, read_yaml

__all__ = [
    "ENV_VAR",
    "Constitution",
    "ConstitutionFile",
    "Example",
    "Judge",
    "JudgeFile",
    "Principle",
    "RubricItem",
    "constitution_json_schema",
    "constitution_to_yaml",
    "list_constitutions",
    "load_constitution",
    "search_dirs",
]

ENV_VAR = "SELFIMPROVE_CONSTITUTIONS"
_SUFFIXES = (".yaml", ".yml")

PrincipleId = Annotated[
    str,
    Field(
        pattern=ID_PATTERN,
        description=(
            "unique within the constitution's principles (ASCII letters, digits, '_', '-', '.')"
        ),
    ),
]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


Text = Annotated[str, Field(min_length=1), AfterValidator(_not_blank)]


class Principle(BaseModel):
    """One principle: how to critique a response against it, and how to revise it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: PrincipleId
    critique: Text = Field(description="the critique request shown to the critic")
    revision: Text = Field(description="the revision request shown to the reviser")
    weight: float = Field(
        default=1.0, gt=0, allow_inf_nan=False, strict=True,
        description="relative chance of being sampled",
    )


class Example(BaseModel):
    """A demonstration: a prompt and a response that follows the constitution (and the
    prompt's own ``checks``, in the vocabulary of prompt files). Shown to the policy as earlier
    turns when it draws its extra samples; what it then answers trains on the bare prompt."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    prompt: Text
    response: Text
    checks: list[Check] = Field(
        default_factory=list, description="the prompt's own checks; the response must pass them"
    )


class RubricItem(BaseModel):
    """One additive item of a pointwise rubric: ``points`` awarded when ``criterion`` holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    points: int = Field(gt=0, strict=True)
    criterion: Text


Rubric = Annotated[list[RubricItem], Field(min_length=1)]
_PAIRWISE_DOC = "instruction for choosing the better of two responses"
_EXAMPLES_DOC = ("demonstrations shown to the policy ahead of the prompt when it draws extra "
                 "samples (critique.num_samples); each response must pass the hard checks")
_POINTWISE_DOC = "additive rubric items; only best-of-N sampling (num_samples > 0) scores with it"


class Judge(BaseModel):
    """How responses are judged: pairwise instruction and optional pointwise additive rubric."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    pairwise: Text = Field(description=_PAIRWISE_DOC)
    pointwise: Rubric | None = Field(default=None, description=_POINTWISE_DOC)

    @property
    def max_points(self) -> int:
        """Points of a response meeting every criterion (0 without a rubric)."""
        return sum(item.points for item in self.pointwise or [])


class JudgeFile(BaseModel):
    """A file's ``judge`` block. With ``extends``, each field set here (not null) replaces the
    parent's one and the others are inherited; without it, ``pairwise`` is required."""

    model_config = ConfigDict(extra="forbid", title="Judge")
    pairwise: Text | None = Field(default=None, description=_PAIRWISE_DOC)
    pointwise: Rubric | None = Field(default=None, description=_POINTWISE_DOC)


def _version(value: Any) -> Any:
    # bool is an int subclass and YAML turns `yes` into True; neither is a version.
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"must be an integer or a string, got {type(value).__name__}")
    return value


class Removal(BaseModel):
    """With ``extends``: the parent's principles and checks, by id, that this file leaves out."""

    model_config = ConfigDict(extra="forbid")
    principles: list[PrincipleId] = Field(
        default_factory=list, description="ids of the parent's principles to leave out"
    )
    checks: list[Text] = Field(
        default_factory=list, description="ids of the parent's checks to leave out"
    )


class ConstitutionFile(BaseModel):
    """One constitution file as written, before ``extends`` is resolved.

    Without ``extends``, ``principles`` (at least one) and ``judge.pairwise`` are required.
    """

    model_config = ConfigDict(extra="forbid", title="Constitution")
    name: Text
    version: int | str
    description: str = ""
    extends: str | None = Field(
        default=None,
        min_length=1,
        description="parent constitution: a name, or a path relative to this file",
    )
    principles: list[Principle] | None = None
    checks: list[Check] = Field(default_factory=list)
    remove: Removal | None = Field(
        default=None,
        description="with `extends`: the parent's principles and checks (by id) left out",
    )
    judge: JudgeFile | None = None
    examples: list[Example] | None = Field(
        default=None, description=_EXAMPLES_DOC + "; with `extends`, set replaces the parent's"
    )

    _check_version = field_validator("version", mode="before")(_version)


class Constitution(BaseModel):
    """A resolved constitution (after ``extends``): what the loop uses."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Text
    version: int | str
    description: str = ""
    principles: list[Principle] = Field(min_length=1)
    checks: list[Check] = Field(default_factory=list)
    judge: Judge
    examples: list[Example] = Field(default_factory=list, description=_EXAMPLES_DOC)
    source: Path | None = Field(default=None, exclude=True, description="the file it came from")

    _check_version = field_validator("version", mode="before")(_version)

    @model_validator(mode="after")
    def _unique_ids(self) -> Constitution:
        for what, items in (("principle", self.principles), ("check", self.checks)):
            seen: set[str] = set()
            for item in items:
                if item.id in seen:
                    raise ValueError(f"duplicate {what} id '{item.id}'")
                seen.add(item.id)
        return self

    def content(self) -> dict[str, Any]:
        """The resolved content as JSON data (no ``examples`` key when there are none, so a
        constitution written before examples existed keeps its hash)."""
        data = self.model_dump(mode="json")
        if not data["examples"]:
            del data["examples"]
        return data

    @property
    def content_hash(self) -> str:
        """First 16 hex chars of the sha256 of the canonical JSON of the resolved content."""
        canonical = json.dumps(
            self.content(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    def principle(self, principle_id: str) -> Principle:
        """The principle with ``principle_id`` (KeyError if absent)."""
        for p in self.principles:
            if p.id == principle_id:
                return p
        raise KeyError(f"constitution '{self.name}' has no principle '{principle_id}'")

    def sample_principles(self, k: int, rng: random.Random) -> list[Principle]:
        """Draw ``k`` distinct principles, each draw proportional to weight among those left.

        ``k`` larger than the number of principles returns all of them (in drawn order).
        """
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        pool = list(self.principles)
        chosen: list[Principle] = []
        while pool and len(chosen) < k:
            (pick,) = rng.choices(range(len(pool)), weights=[p.weight for p in pool])
            chosen.append(pool.pop(pick))
        return chosen


# --- finding files -------------------------------------------------------------------------


def _shipped_dir() -> Path:
    """The shipped constitutions: the package ``selfimprove.constitutions`` (the top-level
    ``constitutions/`` directory, mapped into the package by pyproject.toml)."""
    try:
        shipped = resources.files("selfimprove.constitutions")
    except ModuleNotFoundError:  # a checkout run without installing it: no mapping in effect
        shipped = None
    if isinstance(shipped, Path):  # files are read by path, so a zip import does not count
        return shipped
    # The checkout's layout, next to this module's own file (not selfimprove.__file__, None when
    # the package is imported as a namespace package, as some editable installs do).
    return Path(__file__).resolve().parent.parent / "constitutions"


def search_dirs() -> list[Path]:
    """Directories searched for constitutions by name: ``$SELFIMPROVE_CONSTITUTIONS`` first."""
    extra = [Path(d).expanduser() for d in os.environ.get(ENV_VAR, "").split(os.pathsep) if d]
    return [*extra, _shipped_dir()]


def _looks_like_path(ref: str | Path) -> bool:
    text = str(ref)
    return isinstance(ref, Path) or "/" in text or os.sep in text or text.endswith(_SUFFIXES)


def _in_dir(directory: Path, name: str) -> Path | None:
    for suffix in _SUFFIXES:
        candidate = directory / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _find_by_name(name: str, first: Path | None = None) -> Path | None:
    dirs = ([first] if first is not None else []) + search_dirs()
    for directory in dirs:
        found = _in_dir(directory, name)
        if found is not None:
            return found
    return None


def list_constitutions() -> list[tuple[str, Path, str]]:
    """``(name, path, description)`` of every constitution found by name, sorted by name.

    A name found in several directories is listed once, with the file that loading it uses.
    A file whose description cannot be read is listed with the reason instead.
    """
    found: dict[str, tuple[str, Path, str]] = {}
    for directory in search_dirs():
        if not directory.is_dir():
            continue
        for path in sorted(p for s in _SUFFIXES for p in directory.glob(f"*{s}")):
            if path.stem in found:
                continue
            try:
                data, _ = read_yaml(path)
                description = data.get("description", "") if isinstance(data, dict) else ""
                description = str(description).strip()
            except ConfigError as exc:
                description = f"(invalid: {exc.detail})"
            found[path.stem] = (path.stem, path, description)
    return [found[name] for name in sorted(found)]


# --- loading -------------------------------------------------------------------------------


def load_constitution(name_or_path: str | Path) -> Constitution:
    """Load and resolve a constitution by name (see :func:`search_dirs`) or by path."""
    if _looks_like_path(name_or_path) or Path(name_or_path).is_file():
        path = Path(name_or_path)
        if path.is_dir():
            raise ConfigError(path, "is a directory, not a constitution file (.yaml)")
        if not path.is_file():
            raise ConfigError(path, "not a regular file" if path.exists() else "file not found")
    else:
        found = _find_by_name(str(name_or_path))
        if found is None:
            known = ", ".join(name for name, _, _ in list_constitutions()) or "none"
            raise ConfigError(
                str(name_or_path),
                f"no constitution named '{name_or_path}' (known: {known}; "
                f"add directories with ${ENV_VAR})",
            )
        path = found
    return _resolve(path, ())


def _resolve(path: Path, chain: tuple[Path, ...]) -> Constitution:
    data, node = read_yaml(path)
    raw = load_model(path, ConstitutionFile, data, node)
    _check_unique_ids(path, node, raw)
    if raw.extends is None:
        parent = None
        if raw.remove is not None:
            raise ConfigError(path, "'remove' leaves out a parent's principles or checks; it "
                              "needs `extends`", line=line_of(node, ("remove",)), field="remove")
        _require(path, node, raw, "principles", "at least one principle is required")
        _require(path, node, raw, "judge", "a judge rubric is required (or use `extends`)")
        if raw.judge is not None and raw.judge.pairwise is None:
            line = line_of(node, ("judge",))
            raise ConfigError(path, "Field required", line=line, field="judge.pairwise")
    else:
        parent = _resolve_parent(path, node, raw.extends, chain)
        if raw.remove is not None:
            parent = _remove(path, node, raw, parent)
    fields = _merge(raw, parent)
    try:
        constitution = Constitution(**fields, source=path)
    except ValueError as exc:  # cannot happen for ids checked above; kept as a typed error
        raise ConfigError(path, str(exc)) from None
    _check_word_bounds(path, node, constitution)
    if raw.examples is not None:  # inherited examples were checked in their own file
        _check_examples(path, node, constitution)
    return constitution


def _check_word_bounds(path: Path, node: Any, constitution: Constitution) -> None:
    """Hard word limits that no response can meet together would fail every answer."""
    hard = [c for c in constitution.checks if c.hard]
    most = min((c.value for c in hard if c.kind == "max_words"), default=None)
    least = max((c.value for c in hard if c.kind == "min_words"), default=None)
    if most is not None and least is not None and least > most:
        raise ConfigError(path, f"the hard checks ask for at least {least} words and at most "
                          f"{most}: no response can pass both", line=line_of(node, ("checks",)),
                          field="checks")


def _check_examples(path: Path, node: Any, constitution: Constitution) -> None:
    """A demonstration that breaks a hard check would teach the policy to break it."""
    from selfimprove.checks import run_checks

    for i, example in enumerate(constitution.examples):
        results = run_checks([*constitution.checks, *example.checks], example.response)
        failed = [f"{r.check_id} ({r.detail})" if r.detail else r.check_id
                  for r in results if r.hard and not r.passed]
        if failed:
            raise ConfigError(
                path,
                "the example's response fails its hard checks: " + ", ".join(failed),
                line=line_of(node, ("examples", i, "response")),
                field=f"examples[{i}].response",
            )


def _require(path: Path, node: Any, raw: ConstitutionFile, field: str, message: str) -> None:
    value = getattr(raw, field)
    if value is None or value == []:
        if value is None:
            message = f"missing: {message}"
        raise ConfigError(path, message, line=line_of(node, (field,)), field=field)


def _check_unique_ids(path: Path, node: Any, raw: ConstitutionFile) -> None:
    for field, items in (("principles", raw.principles or []), ("checks", raw.checks)):
        first_index: dict[str, int] = {}
        for i, item in enumerate(items):
            if item.id in first_index:
                first_line = line_of(node, (field, first_index[item.id], "id"))
                raise ConfigError(
                    path,
                    f"duplicate id '{item.id}' (first used on line {first_line})",
                    line=line_of(node, (field, i, "id")),
                    field=f"{field}[{i}].id",
                )
            first_index[item.id] = i


def _resolve_parent(path: Path, node: Any, ref: str, chain: tuple[Path, ...]) -> Constitution:
    line = line_of(node, ("extends",))
    if _looks_like_path(ref):
        parent_path: Path | None = (path.parent / ref) if not Path(ref).is_absolute() else Path(ref)
        if not parent_path.is_file():
            parent_path = None
    else:
        parent_path = _find_by_name(ref, first=path.parent)
    if parent_path is None:
        shipped = Path(ref).stem if _looks_like_path(ref) else None
        hint = (f"; a shipped or ${ENV_VAR} constitution is named without a path: "
                f"extends: {shipped}" if shipped and _find_by_name(shipped) else "")
        raise ConfigError(
            path,
            f"parent constitution '{ref}' not found (looked next to this file"
            + ("" if _looks_like_path(ref) else f" and in the {ENV_VAR}/shipped directories")
            + ")" + hint,
            line=line,
            field="extends",
        )
    here = path.resolve()
    seen = (*chain, here)
    if parent_path.resolve() in seen:
        loop = [p.name for p in seen[seen.index(parent_path.resolve()) :]] + [parent_path.name]
        raise ConfigError(
            path, "extends cycle: " + " -> ".join(loop), line=line, field="extends"
        )
    return _resolve(parent_path, seen)


def _remove(path: Path, node: Any, raw: ConstitutionFile, parent: Constitution
            ) -> Constitution:
    """``parent`` without the principles and checks ``raw.remove`` names; an id the parent
    does not have, or one this file also defines, is a located error."""
    assert raw.remove is not None
    kept: dict[str, list[Any]] = {}
    for field in ("principles", "checks"):
        theirs = [item.id for item in getattr(parent, field)]
        mine = {item.id for item in getattr(raw, field) or []}
        removed = getattr(raw.remove, field)
        for i, item_id in enumerate(removed):
            where = {"line": line_of(node, ("remove", field, i)), "field": f"remove.{field}[{i}]"}
            if item_id not in theirs:
                near = [t for t in theirs if one_edit_apart(item_id, t)]
                hint = f"did you mean '{near[0]}'?" if near else (
                    f"its {field}: {', '.join(theirs) or 'none'}")
                raise ConfigError(path, f"the parent '{parent.name}' has no {field[:-1]} "
                                  f"'{item_id}' ({hint})", **where)
            if item_id in mine:
                raise ConfigError(path, f"'{item_id}' is both removed and defined in this "
                                  f"file: drop one (a {field[:-1]} with the parent's id "
                                  "replaces the parent's)", **where)
        kept[field] = [item for item in getattr(parent, field) if item.id not in removed]
    if not kept["principles"] and not raw.principles:
        raise ConfigError(path, "removes every principle of the parent and adds none: at least "
                          "one principle is required", line=line_of(node, ("remove",)),
                          field="remove.principles")
    return parent.model_copy(update=kept)


def _merge_by_id(parent: list[Any], child: list[Any]) -> list[Any]:
    """Parent order kept; a child item replaces the parent item with its id; new ones appended."""
    by_id = {item.id: item for item in child}
    merged = [by_id.pop(item.id, item) for item in parent]
    return merged + [item for item in child if item.id in by_id]


def _merge_judge(own: JudgeFile | None, parent: Judge | None) -> Judge:
    """Field by field: what the file sets (not null) wins, the rest comes from the parent."""
    fields = parent.model_dump() if parent is not None else {}
    if own is not None:
        fields.update({k: v for k, v in own.model_dump().items() if v is not None})
    return Judge.model_validate(fields)


def _merge(raw: ConstitutionFile, parent: Constitution | None) -> dict[str, Any]:
    own = {
        "name": raw.name,
        "version": raw.version,
        "description": raw.description,
        "principles": raw.principles or [],
        "checks": raw.checks,
        "judge": _merge_judge(raw.judge, None if parent is None else parent.judge),
        "examples": raw.examples or [],
    }
    if parent is None:
        return own
    set_fields = raw.model_fields_set
    return {
        **own,
        "description": raw.description if "description" in set_fields else parent.description,
        "principles": _merge_by_id(parent.principles, own["principles"]),
        "checks": _merge_by_id(parent.checks, raw.checks),
        "examples": parent.examples if raw.examples is None else raw.examples,
    }


# --- export --------------------------------------------------------------------------------


class _LiteralDumper(yaml.SafeDumper):
    """Safe dumper writing multi-line strings as ``|`` blocks, so prompts stay readable."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _str_representer)


def constitution_to_yaml(constitution: Constitution) -> str:
    """The resolved constitution as YAML (no ``extends``); loading it gives the same hash."""
    data = constitution.content()
    if data["judge"]["pointwise"] is None:  # absent reads better than `pointwise: null`
        del data["judge"]["pointwise"]
    # id and kind first, as people write them; an absent description is left out.
    data["checks"] = [
        {"id": c["id"], "kind": c["kind"]}
        | {k: v for k, v in c.items() if v is not None and k not in ("id", "kind")}
        for c in data["checks"]
    ]
    return yaml.dump(data, Dumper=_LiteralDumper, sort_keys=False, allow_unicode=True, width=100)


def constitution_json_schema() -> dict[str, Any]:
    """JSON schema of a constitution file, for editors (published as constitutions/schema.json)."""
    schema = ConstitutionFile.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m selfimprove.constitution")
    parser.add_argument("--schema", action="store_true", help="print the JSON schema")
    args = parser.parse_args(argv)
    if not args.schema:
        parser.print_help()
        return 2
    print(json.dumps(constitution_json_schema(), indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
