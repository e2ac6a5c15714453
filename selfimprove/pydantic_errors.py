"""Which of pydantic's errors a located error shows first, and in the user's words."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

#: ids of principles and checks (also in the JSON schema)
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
ID_RULE = "ASCII letters, digits, '_', '-' and '.', starting with a letter or digit"


def shown_errors(exc: ValidationError) -> list[tuple[dict[str, Any], str | None]]:
    """Every error to show, each with a message in our words where pydantic's would mislead.

    A misspelt key gives two errors, the key it replaced missing and the unknown key; they are
    shown as one, the unknown key with the key it was probably meant to be.
    """
    errors = exc.errors(include_url=False)
    out: list[tuple[dict[str, Any], str | None]] = []
    meant_keys: set[tuple[tuple[Any, ...], str]] = set()
    for err in errors:
        if err["type"] == "extra_forbidden":
            key, parent = str(err["loc"][-1]), tuple(err["loc"][:-1])
            meant = next((str(o["loc"][-1]) for o in errors
                          if o["type"] == "missing" and o["loc"]
                          and tuple(o["loc"][:-1]) == parent
                          and one_edit_apart(key.casefold(), str(o["loc"][-1]).casefold())),
                         None)
            if meant is not None:
                meant_keys.add((parent, meant))
                out.append((err, f"unknown key (did you mean '{meant}'?)"))
            else:
                out.append((err, "unknown key (not allowed here)"))
        elif err["type"] == "string_pattern_mismatch" and (err.get("ctx") or {}).get(
                "pattern") == ID_PATTERN:
            out.append((err, f"not a valid id: use {ID_RULE}"))
        else:
            out.append((err, None))
    return [(e, ours) for e, ours in out
            if not (e["type"] == "missing" and e["loc"]
                    and (tuple(e["loc"][:-1]), str(e["loc"][-1])) in meant_keys)]


def first_error(exc: ValidationError) -> tuple[dict[str, Any], str | None]:
    """The error to show where only one is: an unknown key first (it explains others)."""
    shown = shown_errors(exc)
    return next((e for e in shown if e[0]["type"] == "extra_forbidden"), shown[0])


def more_errors(exc: ValidationError) -> str:
    """`` (and 2 more errors)``, or nothing for a single error."""
    more = len(shown_errors(exc)) - 1
    return f" (and {more} more error{'s' if more > 1 else ''})" if more else ""


def one_edit_apart(a: str, b: str) -> bool:
    """Equal, or one insertion, deletion, substitution or swap of neighbours apart."""
    if abs(len(a) - len(b)) > 1:
        return False
    i = 0  # the first position where they differ
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    if len(a) == len(b):
        swapped = a[i : i + 2] == b[i : i + 2][::-1] and a[i + 2 :] == b[i + 2 :]
        return a[i + 1 :] == b[i + 1 :] or swapped
    longer, shorter = (a, b) if len(a) > len(b) else (b, a)
    return longer[i + 1 :] == shorter[i:]
