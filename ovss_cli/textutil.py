"""Wording shared by every error message: close-match suggestions and one-line summaries of exceptions."""

from __future__ import annotations

import difflib
from typing import Iterable


def did_you_mean(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """' (did you mean 'x'?)' for the closest of `choices`, or '' when nothing is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=cutoff)
    return f" (did you mean '{close[0]}'?)" if close else ""


def first_line(err: BaseException | str) -> str:
    """The first non-empty line of an exception's message, else its type name (never empty)."""
    for line in str(err).splitlines():
        if line.strip():
            return line.strip()
    return type(err).__name__ if isinstance(err, BaseException) else "no details"
