"""Which of pydantic's errors a located error shows first, and in the user's words."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

#: ids of principles and checks (also in the JSON schema)
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
ID_RULE = "ASCII letters, digits, '_', '-' and '.', starting with a letter or digit"


def first_error(exc: ValidationError) -> tuple[dict[str, Any], str | None]:
    """The error to show, and a message in our words where pydantic's would mislead.

    A misspelt key gives two errors, the key it replaced missing and the unknown key; the
    unknown key comes first, with the key it was probably meant to be.
    """
    errors = exc.errors(include_url=False)
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    if err["type"] == "extra_forbidden":
        key, parent = str(err["loc"][-1]), tuple(err["loc"][:-1])
        for other in errors:
            meant = str(other["loc"][-1]) if other["loc"] else ""
            if (other["type"] == "missing" and tuple(other["loc"][:-1]) == parent
                    and one_edit_apart(key.casefold(), meant.casefold())):
                return err, f"unknown key (did you mean '{meant}'?)"
        return err, "unknown key (not allowed here)"
    if err["type"] == "string_pattern_mismatch" and (err.get("ctx") or {}).get(
            "pattern") == ID_PATTERN:
        return err, f"not a valid id: use {ID_RULE}"
    return err, None


def more_errors(exc: ValidationError) -> str:
    """`` (and 2 more errors)``, or nothing for a single error."""
    more = exc.error_count() - 1
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
