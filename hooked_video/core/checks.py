"""Strict checks of what users hand to the public API: no coercion, errors that say what to do.

A question is a non-empty string; options a list of 2 to 26 distinct non-empty strings; an
answer a 0-based integer index or the exact text of one option (a float, a bool or a letter is
refused rather than guessed); counts and fractions are numbers in their range.
"""

from __future__ import annotations

import math
import numbers
from typing import Sequence

#: The most options a prompt can letter (A-Z).
MAX_OPTIONS = 26


class InvalidInputError(ValueError):
    """An argument or data entry has the wrong type or value; the message names it."""


def _kind(value) -> str:
    return type(value).__name__


def check_question(question, where: str = "question") -> str:
    """``question`` if it is a non-empty string."""
    if not isinstance(question, str):
        raise InvalidInputError(f"{where} must be a string, got {_kind(question)} {question!r}")
    if not question.strip():
        raise InvalidInputError(f"{where} is empty; give the question text")
    return question


def check_options(options, where: str = "options") -> list[str]:
    """``options`` as a list: 2 to 26 distinct non-empty strings (None or [] for a free-form question)."""
    if options is None:
        return []
    if isinstance(options, (str, bytes)):
        raise InvalidInputError(f"{where} must be a list of strings, got a single string {options!r}; "
                                "write options=['first', 'second', ...]")  # fmt: skip
    if not isinstance(options, Sequence):
        raise InvalidInputError(f"{where} must be a list of strings, got {_kind(options)}")
    options = list(options)
    if not options:
        return []
    for i, option in enumerate(options):
        if not isinstance(option, str) or not option.strip():
            raise InvalidInputError(f"{where}[{i}] must be a non-empty string, got {_kind(option)} {option!r}")
    if len(options) < 2:
        raise InvalidInputError(f"{where} has one option ({options[0]!r}); a multiple-choice question needs at least 2")
    if len(options) > MAX_OPTIONS:
        raise InvalidInputError(f"{where} has {len(options)} options; at most {MAX_OPTIONS} can be lettered A-Z")
    seen: dict[str, int] = {}
    for i, option in enumerate(options):
        key = " ".join(option.split())  # the prompt shows options without their surrounding or repeated spaces
        if key in seen:
            first = options[seen[key]]
            same = f"both {option!r}" if first == option else f"{first!r} and {option!r}, the same but for spaces"
            raise InvalidInputError(f"{where}[{seen[key]}] and {where}[{i}] are {same}; options must differ")
        seen[key] = i
    return options


def check_answer(answer, options: list[str], where: str = "answer") -> int | None:
    """The 0-based index of the true option, from an integer index or the option's exact text."""
    if answer is None:
        return None
    if not options:
        raise InvalidInputError(f"{where} needs options=[...]: a free-form question has no option to be true")
    if isinstance(answer, str):
        if answer not in options:
            hint = ""
            if len(answer) == 1 and answer.isalpha():
                hint = " (a letter is not accepted: give the option's text or its 0-based index)"
            raise InvalidInputError(f"{where} {answer!r} is not among the options {options}{hint}")
        return options.index(answer)
    if isinstance(answer, bool) or not isinstance(answer, numbers.Integral):
        raise InvalidInputError(
            f"{where} must be an integer index or the text of an option, got {_kind(answer)} {answer!r}"
        )
    if not 0 <= int(answer) < len(options):
        raise InvalidInputError(f"{where} index {answer} is outside the {len(options)} options (0..{len(options) - 1})")
    return int(answer)


def check_count(value, name: str, minimum: int = 1, allow_none: bool = True) -> int | None:
    """An integer >= ``minimum`` (None passes when allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidInputError(f"{name} must be an integer, got {_kind(value)} {value!r}")
    if value < minimum:
        raise InvalidInputError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def check_frame_times(times, n_frames: int) -> list[float]:
    """One finite, non-negative number of seconds per frame, in order."""
    if isinstance(times, (str, bytes)) or not hasattr(times, "__len__"):
        raise InvalidInputError(f"frame_times must be a list of seconds, one per frame, got {_kind(times)}")
    values = list(times)
    if len(values) != n_frames:
        raise InvalidInputError(f"frame_times has {len(values)} values for {n_frames} frames; give one per frame")
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0]
    if bad:
        raise InvalidInputError(f"frame_times must be non-negative numbers of seconds, got {bad[0]!r}")
    if any(b < a for a, b in zip(values, values[1:])):
        raise InvalidInputError(f"frame_times must not decrease (frames in playing order), got {values}")
    return [float(v) for v in values]


def check_fraction(value, name: str) -> float:
    """A number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidInputError(f"{name} must be a number in [0, 1), got {_kind(value)} {value!r}")
    if not 0.0 <= float(value) < 1.0:
        raise InvalidInputError(f"{name} must be in [0, 1), got {value}")
    return float(value)


def check_unique_ids(ids: Sequence[str], where: str = "samples") -> None:
    """Refuse duplicate sample ids: results are keyed by them."""
    first: dict[str, int] = {}
    for i, sample_id in enumerate(ids):
        if sample_id in first:
            raise InvalidInputError(f"{where}: items {first[sample_id]} and {i} share the id {sample_id!r}; "
                                    "results are keyed by sample id, so give every sample its own")  # fmt: skip
        first[sample_id] = i
