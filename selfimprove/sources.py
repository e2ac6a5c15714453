"""Prompt sources: JSONL or plain-text files, prompt sets shipped with the package (by name,
e.g. ``general``), local `datasets` datasets, hub datasets."""

from __future__ import annotations

import codecs
import json
import os
import unicodedata
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from selfimprove.checks import CHECK_KINDS, Check
from selfimprove.conversation import ConversationError, as_messages, split_answer, transcript
from selfimprove.errors import ConfigError, ConfigErrors
from selfimprove.hashing import prompt_id
from selfimprove.pydantic_errors import first_error, more_errors, one_edit_apart
from selfimprove.types import Message

if TYPE_CHECKING:
    from selfimprove.constitution import Constitution

_PACKAGED_DIR = "data/prompts"
_PACKAGED_SUFFIXES = (".jsonl", ".txt")


def packaged_prompt_names() -> list[str]:
    """Names of the prompt sets shipped with the package (``general``, ...)."""
    directory = resources.files("selfimprove").joinpath(_PACKAGED_DIR)
    if not directory.is_dir():
        return []
    names = {Path(f.name).stem for f in directory.iterdir() if f.name.endswith(_PACKAGED_SUFFIXES)}
    return sorted(names)


def packaged_prompts(name: str) -> Path | None:
    """The file of the prompt set shipped under ``name`` (e.g. ``general``), or None."""
    if not is_prompt_name(name):
        return None
    directory = resources.files("selfimprove").joinpath(_PACKAGED_DIR)
    for suffix in _PACKAGED_SUFFIXES:
        candidate = directory.joinpath(name + suffix)
        # Only a real file can be handed on as a Path (not a member of a zip import).
        if isinstance(candidate, Path) and candidate.is_file():
            return candidate
    return None


def is_prompt_name(ref: str | Path) -> bool:
    """Whether ``ref`` reads as the name of a packaged prompt set: no directory, no suffix."""
    text = str(ref)
    return bool(text) and "/" not in text and os.sep not in text and not Path(text).suffix


class PromptRecord(BaseModel):
    """A prompt with its id and the checks it brings (verifiable instructions).

    A prompt's checks use the constitution's vocabulary and join the constitution's checks
    wherever those are used: the check node, the critic, harvest, the gate and ``eval``.
    """

    model_config = ConfigDict(frozen=True)
    id: str
    prompt: str  # for a conversation: its transcript (what the held-out split hashes)
    checks: tuple[Check, ...] = ()
    messages: tuple[Message, ...] = ()  # a conversation instead of a lone user turn
    response: str | None = None  # an answer already given (agent traffic), to critique
    response_truncated: bool = False  # that answer hit its token cap when it was served
    source: Literal["loop", "traffic"] = "loop"  # traffic: recorded from agents or requests

    @classmethod
    def conversation(cls, messages: Sequence[Any], *, id: str | None = None,
                     response: str | None = None, checks: Sequence[Check] = (),
                     source: Literal["loop", "traffic"] = "loop",
                     response_truncated: bool = False) -> PromptRecord:
        """A record for a conversation; a final assistant turn becomes ``response``."""
        conv, answer = split_answer(as_messages(messages))
        text = transcript(conv)
        return cls(id=id or prompt_id(text), prompt=text, messages=tuple(conv),
                   response=response if response is not None else answer, checks=tuple(checks),
                   source=source, response_truncated=response_truncated)

    @property
    def pair(self) -> tuple[str, str]:
        return (self.id, self.prompt)

    def to_messages(self) -> list[Message]:
        """What the policy answers: the conversation (system turn included), or the prompt as
        one user turn."""
        return list(self.messages) or [Message(role="user", content=self.prompt)]

    def checks_json(self) -> list[dict[str, Any]]:
        return [c.model_dump(mode="json") for c in self.checks]


_CHECKS = TypeAdapter(list[Check])


def parse_prompt_checks(raw: Any) -> tuple[Check, ...]:
    """Validate a prompt record's ``checks`` (raises pydantic's ValidationError)."""
    return tuple(_CHECKS.validate_python(raw))


def load_prompts(path: str | Path, field: str = "prompt") -> list[tuple[str, str]]:
    """``(id, prompt)`` pairs of a prompt file (see :func:`load_prompt_records`)."""
    return [r.pair for r in load_prompt_records(path, field)]


def load_prompt_records(path: str | Path, field: str = "prompt", *,
                        all_errors: bool = False,
                        constitution: Constitution | None = None) -> list[PromptRecord]:
    """Read prompt records from a JSON-lines file (``.jsonl``, ``.json`` or ``.ndjson``, any
    case: ``{"prompt": ..., "id": ..., "checks": [...]}`` per line) or a text file (one
    prompt per line). Blank lines are skipped; errors name the file, line and field. With
    ``all_errors`` every bad line is reported (:class:`PromptFileErrors`), not just the first.
    With ``constitution``, a prompt check that takes the id of a different check of it is an
    error on its line.

    A bare name such as ``general`` that is not an existing file names a packaged prompt set.
    """
    path = Path(path)
    if not path.exists() and is_prompt_name(path):
        packaged = packaged_prompts(str(path))
        if packaged is None:
            known = ", ".join(packaged_prompt_names()) or "none"
            raise ConfigError(
                path, f"prompt file not found, nor a packaged prompt set (known: {known})"
            )
        path = packaged
    if path.is_dir():
        raise ConfigError(path, "is a directory, not a prompt file (.jsonl or text)")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, "prompt file not found") from None
    except OSError as exc:
        raise ConfigError(path, f"cannot read the prompt file: {exc.strerror}") from None
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0  # Windows editors
    try:
        text = raw[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[: bom + exc.start].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        raise ConfigError(path, f"not UTF-8 text (byte {bom + exc.start})",
                          line=before.count(b"\n") + 1) from None
    # Line breaks only: str.splitlines would also split at U+2028, U+2029 and U+0085, which
    # JSON allows unescaped inside a string (json.dumps(..., ensure_ascii=False) writes them).
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    json_lines = path.suffix.lower() in JSON_LINES_SUFFIXES
    out: list[PromptRecord] = []
    problems: list[ConfigError] = []
    first_line: dict[str, int] = {}  # prompt id -> the line that gave it first
    theirs = {c.id: c for c in constitution.checks} if constitution is not None else {}
    owner = f"the constitution {constitution.name!r}" if constitution is not None else ""
    for no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = (_record(path, no, line, field) if json_lines
                      else _text_record(path, no, line))
            _unique(path, no, record, first_line)
            _no_clash(path, no, record, theirs, owner)
        except ConfigError as exc:
            if not all_errors:
                raise
            problems.append(exc)
            continue
        out.append(record)
    if problems:
        raise PromptFileErrors(problems)
    if not out:
        raise ConfigError(path, "no prompts in file")
    return out


JSON_LINES_SUFFIXES = (".jsonl", ".json", ".ndjson")


class PromptFileErrors(ConfigErrors):
    """Every bad line of one prompt file, one error a line (``prompts check`` shows them all)."""


def _text_record(path: Path, no: int, line: str) -> PromptRecord:
    """A text file's line is the prompt; a JSON record there means a misnamed JSON-lines file,
    whose checks would silently become part of the prompt text."""
    text = line.strip()
    if text.startswith("{"):
        try:
            row = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            row = None
        if isinstance(row, dict) and ({"prompt", "messages", "checks"} & row.keys()):
            raise ConfigError(
                path, f"a JSON record in a file read as plain text (one prompt a line): name "
                f"the file {path.stem}.jsonl so that its fields and checks are read", line=no,
            )
    return PromptRecord(id=prompt_id(text), prompt=text)


def _unique(path: Path, no: int, record: PromptRecord, first_line: dict[str, int]) -> None:
    """Held-out splitting and the store key rows by prompt id, so two records may not share
    one (a prompt without an ``id`` takes the hash of its text)."""
    first = first_line.setdefault(record.id, no)
    if first != no:
        if record.id == prompt_id(record.prompt):
            raise ConfigError(path, f"the same prompt as line {first}: remove one, or give each "
                              "an 'id'", line=no)
        raise ConfigError(path, f"duplicate prompt id {record.id!r} (also line {first})",
                          line=no, field="id")
    # Texts that differ only in Unicode composition or spacing are one prompt to a reader, but
    # hash apart: the held-out split could put one in training and its twin in the held-out set.
    norm = "\0" + _normalized(record.prompt)
    twin = first_line.setdefault(norm, no)
    exact = first_line.setdefault(norm + "\0" + record.prompt, no)
    if twin != no and exact == no:
        raise ConfigError(path, f"the same prompt as line {twin} but for Unicode composition "
                          "or spacing: remove one", line=no)


def _normalized(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


def _record(path: Path, no: int, line: str, field: str) -> PromptRecord:
    try:
        row = _plain(json.loads(line, object_pairs_hook=_KeyedObject.from_pairs))
    except json.JSONDecodeError as exc:
        raise ConfigError(path, f"invalid JSON: {exc.msg}", line=no) from None
    except _DuplicateKey as exc:
        raise ConfigError(path, "given twice in one object", line=no, field=str(exc)) from None
    except RecursionError:
        raise ConfigError(path, "JSON nested too deeply", line=no) from None
    if not isinstance(row, dict):
        raise ConfigError(path, f"each line must be a JSON object, not {_json_type(row)}",
                          line=no)
    _check_field_names(path, no, row, field)
    record_id = row.get("id")
    if record_id is not None and (isinstance(record_id, bool)
                                  or not isinstance(record_id, str | int | float)):
        raise ConfigError(path, f"must be a string or a number, not {_json_type(record_id)}",
                          line=no, field="id")
    checks = _checks(path, no, row)
    if "messages" in row and field not in row:  # with both (as in UltraFeedback), the prompt
        try:
            return PromptRecord.conversation(row["messages"], id=_id(record_id), checks=checks)
        except ConversationError as exc:
            field_name, _, msg = str(exc).partition(": ")
            raise ConfigError(path, msg, line=no, field=field_name) from None
    text = row.get(field)
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(path, "each line needs a non-empty string (or 'messages', a "
                          "conversation)", line=no, field=field)
    return PromptRecord(id=_id(record_id) or prompt_id(text), prompt=text, checks=checks)


def _id(value: str | float | None) -> str | None:
    return None if value is None or value == "" else str(value)


class _KeyedObject(dict):
    """A JSON object that remembers the first key its text gave twice (json.loads keeps the
    last of two equal keys without a word; YAML files refuse them)."""

    duplicate: str | None = None

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, Any]]) -> _KeyedObject:
        obj = cls()
        for key, value in pairs:
            if key in obj and obj.duplicate is None:
                obj.duplicate = key
            obj[key] = value
        return obj


def _plain(value: Any, where: str = "") -> Any:
    """``value`` with plain dicts; at the first key given twice, :class:`_DuplicateKey` says
    where it is (``checks[0].kind``)."""
    if isinstance(value, _KeyedObject):
        if value.duplicate is not None:
            raise _DuplicateKey(_join(where, value.duplicate))
        return {k: _plain(v, _join(where, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


class _DuplicateKey(Exception):
    pass


def _json_type(value: Any) -> str:
    # bool before int: True is an int too
    names = [(bool, "true/false"), (dict, "an object"), (list, "a list"), (str, "a string"),
             (int | float, "a number"), (type(None), "null")]
    return next((name for kind, name in names if isinstance(value, kind)),
                type(value).__name__)


def _check_field_names(path: Path, no: int, row: dict[str, Any], field: str) -> None:
    """Refuse a misspelt record field (``chekcs``, ``check``): read as an extra field it would
    silently drop the prompt's checks. Only one edit away from a field the record lacks
    counts: datasets carry metadata (``prompt_id``, ``idx``, ``category``) that must load.
    The prompt and ``messages`` are alternatives: their misspellings are named only when
    neither is there (the line is an error then anyway; this says why)."""
    wanted = ["checks"]
    if field not in row and "messages" not in row:
        wanted += [field, "messages"]
    for known in wanted:
        if known in row or len(known) < 5:
            continue
        for key in row:
            if one_edit_apart(key.casefold(), known.casefold()):
                raise ConfigError(path, f"unknown field (did you mean '{known}'?)", line=no,
                                  field=key)


def _checks(path: Path, no: int, row: dict[str, Any]) -> tuple[Check, ...]:
    raw = row.get("checks")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(path, f"must be a list of checks, not {_json_type(raw)}", line=no,
                          field="checks")
    try:
        checks = parse_prompt_checks(raw)
    except ValidationError as exc:
        err, ours = first_error(exc)
        # pydantic puts the union member's tag into loc (checks.0.ends_with.value): drop it
        loc = [str(p) for p in err["loc"] if not (isinstance(p, str) and p.islower()
                                                 and p in CHECK_KINDS)]
        where = "checks" + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc)
        msg = ours or err["msg"].removeprefix("Value error, ")
        if err["type"] == "union_tag_invalid":
            known = ", ".join(CHECK_KINDS)
            msg = f"unknown check kind {err['input'].get('kind')!r} (known: {known})"
            where += ".kind"
        elif err["type"] == "union_tag_not_found":
            msg = "a check needs a 'kind'"
        raise ConfigError(path, msg + more_errors(exc), line=no, field=where) from None
    seen: dict[str, int] = {}
    for i, check in enumerate(checks):
        if check.id in seen:
            raise ConfigError(
                path, f"duplicate check id {check.id!r} (also checks[{seen[check.id]}]; two "
                "checks of one kind need different values or their own ids)",
                line=no, field=f"checks[{i}].id",
            )
        seen[check.id] = i
    return checks


def _no_clash(path: Path, no: int, record: PromptRecord, theirs: dict[str, Check],
              owner: str) -> None:
    """Refuse a prompt check that reuses the id of a different check of the constitution:
    pass rates are kept by check id, so the two would be counted as one."""
    for i, check in enumerate(record.checks):
        other = theirs.get(check.id)
        # the same kind and parameters (hard and description aside) is the same check
        if other is not None and other.derived_id() != check.derived_id():
            raise ConfigError(
                path, f"check id {check.id!r} is also a different check of {owner}; give "
                "this one its own id", line=no, field=f"checks[{i}].id",
            )


def load_dataset_prompts(name: str, split: str = "train", field: str = "prompt"):
    """Prompts from a local `datasets` directory (``save_to_disk``) or a hub dataset id."""
    from datasets import load_dataset, load_from_disk

    ds = load_from_disk(name) if Path(name).is_dir() else load_dataset(name, split=split)
    if hasattr(ds, "keys") and split in ds:
        ds = ds[split]
    if field not in ds.column_names:
        raise ConfigError(name, f"dataset has no column {field!r} ({ds.column_names})")
    return [(prompt_id(t), t) for t in ds[field] if isinstance(t, str) and t.strip()]
