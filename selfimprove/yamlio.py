"""Load YAML files into pydantic models with errors that name file, line and field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from selfimprove.errors import ConfigError, ConfigErrors
from selfimprove.pydantic_errors import shown_errors

M = TypeVar("M", bound=BaseModel)


class _DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping repeats a key; ``key`` is reported as the field."""

    def __init__(self, *args: Any, key: Any) -> None:
        super().__init__(*args)
        self.key = key


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe loader that rejects duplicate keys instead of silently keeping the last one."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            first = seen[key].start_mark.line + 1
            raise _DuplicateKeyError(
                None, None, f"duplicate key '{key}' (first on line {first})", key_node.start_mark,
                key=key,
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def read_yaml(path: str | Path) -> tuple[Any, yaml.Node | None]:
    """Parse a YAML file; return its data and its node tree (for line numbers)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, "file not found") from None
    except IsADirectoryError:
        raise ConfigError(path, "is a directory, not a YAML file") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})",
                          line=line) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - safe loader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        field = str(exc.key) if isinstance(exc, _DuplicateKeyError) else None
        raise ConfigError(
            path, f"invalid YAML: {exc.problem or exc.context}", line=line, field=field
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, f"invalid YAML: {exc}") from None
    return data, node


def line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the deepest node on ``loc`` that exists in the tree."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == str(part):
                    node, line = value_node, key_node.start_mark.line + 1
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_error(path: str | Path, node: yaml.Node | None, exc: ValidationError) -> ConfigError:
    """Every pydantic error as a ConfigError with file, line and field, in file order (one
    error: that error; more: :class:`ConfigErrors`, the first of them on top)."""
    located = [_located(path, node, err, ours) for err, ours in shown_errors(exc)]
    # In file order; an error without a line (a missing top-level key) after those with one.
    located.sort(key=lambda e: (e.line is None, e.line or 0))
    if len(located) > MAX_SHOWN:
        rest = len(located) - MAX_SHOWN
        located = located[:MAX_SHOWN]
        last = located[-1]
        located[-1] = ConfigError(path, f"{last.detail} (and {rest} more errors)",
                                  line=last.line, field=last.field)
    return located[0] if len(located) == 1 else ConfigErrors(located)


#: errors listed at most for one file (the rest counted)
MAX_SHOWN = 20
_YAML_TEXT_NUMBER = re.compile(r"^[+-]?\d+(\.\d*)?[eE][+-]?\d+$")


def _located(path: str | Path, node: yaml.Node | None, err: dict[str, Any],
             ours: str | None) -> ConfigError:
    # Drop discriminator/union tags pydantic inserts into loc (e.g. 'max_words' for a tagged union).
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    if err["type"] == "missing" and loc:
        # The last part names the absent key; keep it even though the YAML has no such node.
        loc = (*_real_path(node, loc[:-1]), loc[-1])
    else:
        loc = _real_path(node, loc)
    msg = ours or err["msg"]
    given = err.get("input")
    if isinstance(given, str) and _YAML_TEXT_NUMBER.match(given):
        # YAML 1.1 (PyYAML) reads 1e3 and 5e-4, with no dot, as text, not as numbers.
        number = float(given)
        full = (f"{int(number)}" if number.is_integer() and abs(number) < 1e18
                else "it with a decimal point, e.g. 5.0e-4")
        msg += f" (YAML read {given!r} as text, not a number: write {full})"
    ctx = err.get("ctx") or {}
    if err["type"] == "value_error" and "error" in ctx:
        msg = str(ctx["error"])  # our validators' own words, without pydantic's "Value error, "
    elif err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        # Point at the tag key itself (e.g. `kind`), which is what the user has to fix.
        tag = str(ctx.get("discriminator", "")).strip("'\"")
        loc = (*loc, tag)
        if err["type"] == "union_tag_invalid":
            msg = f"unknown value '{ctx.get('tag')}' (expected one of: {ctx.get('expected_tags')})"
        else:
            msg = "missing (it selects the type of this item)"
    return ConfigError(path, msg, line=line_of(node, loc), field=format_loc(loc) or None)


def _real_path(node: yaml.Node | None, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Remove loc parts that are not keys in the YAML (pydantic's union-member tags)."""
    out: list[Any] = []
    for part in loc:
        if node is None:
            out.append(part)
            continue
        if isinstance(node, yaml.MappingNode):
            match = [v for k, v in node.value if k.value == str(part)]
            if match:
                out.append(part)
                node = match[0]
            # else: a tag pydantic added (union member name); skip it
            elif not out or isinstance(part, int):
                out.append(part)
                node = None
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            out.append(part)
            node = node.value[part] if part < len(node.value) else None
        else:
            out.append(part)
            node = None
    return tuple(out)


def load_model(path: str | Path, model: type[M], data: Any = None, node: Any = None) -> M:
    """Read ``path`` (or use pre-read ``data``/``node``) and validate it as ``model``."""
    if data is None:
        data, node = read_yaml(path)
    if not isinstance(data, dict):
        kind = "empty" if data is None else type(data).__name__
        raise ConfigError(path, f"expected a mapping at the top level, got {kind}", line=1)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(path, node, exc) from None
