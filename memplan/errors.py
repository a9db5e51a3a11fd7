"""One error type for every bad input, and the 'did you mean' helper.

Library code raises `MemplanError` with a message that says what was wrong, the
value received, what is allowed and how to fix it. The CLI turns it into a one-line
`Error: ...` with exit code 2; the dashboard shows it as a message.
"""
from __future__ import annotations

from collections.abc import Iterable


class MemplanError(ValueError):
    """A user-facing error: the message is meant to be shown as it is."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """' Did you mean 'x'?' for the closest choices, or '' when nothing is close."""
    import difflib  # here, not at the top: only an error needs it (CLI start-up time)

    choices = list(choices)
    close = difflib.get_close_matches(value, choices, n=3, cutoff=0.5)
    if not close:
        norm = value.lower().replace("_", "-").replace(" ", "")
        close = [c for c in choices if norm and (norm in c or c in norm)][:3]
    if not close:
        return ""
    return " Did you mean " + " or ".join(f"'{c}'" for c in close) + "?"


def unknown(kind: str, value: str, choices: Iterable[str], listing: str) -> MemplanError:
    """`Unknown model 'llama7b'. Did you mean 'llama-7b'? See 'memplan models'.`"""
    return MemplanError(f"Unknown {kind} '{value}'.{did_you_mean(value, choices)} See '{listing}'.")
