"""Pydantic validation errors in the words every surface uses (API, CLI, settings file).

One place turns an error's location and message into `(field, message)`, so the API's 422,
the CLI's refusal of an option and a JSON Lines entry's refusal say the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from taskq.models import NAME_RULES

# pydantic's own words for a name's pattern or length ("String should match pattern
# '^[A-Za-z0-9_.:-]+$'"): replaced by the rule every surface states (models.NAME_RULES).
_NAME_ERRORS = frozenset({"string_pattern_mismatch", "string_too_short", "string_too_long"})


@dataclass(frozen=True, slots=True)
class Problem:
    """One invalid field: a dotted path with [index] for list items, and what is wrong."""

    field: str
    message: str
    malformed: bool = False  # the input is not JSON at all


def field_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def problems(exc: ValidationError) -> list[Problem]:
    """Each error of `exc`; a JSON syntax error comes alone, with `malformed` set."""
    errors = exc.errors(include_url=False, include_input=False)
    for err in errors:
        if err["type"] == "json_invalid":
            return [Problem("", err["msg"].removeprefix("Invalid JSON: "), malformed=True)]
    out = []
    for err in errors:
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        elif err["type"] in _NAME_ERRORS and err["loc"] and err["loc"][-1] in NAME_RULES:
            message = NAME_RULES[str(err["loc"][-1])]
        out.append(Problem(field_path(err["loc"]), message))
    return out
