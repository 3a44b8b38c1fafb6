"""The one exception type users see: a message that says what is wrong and how to fix it."""
from __future__ import annotations


class BenchError(Exception):
    """A user-facing error. `str(err)` is printed as-is by the CLI, which exits with `exit_code`."""

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int = 2) -> None:
        self.message = message
        self.hint = hint
        self.exit_code = exit_code
        super().__init__(message if hint is None else f"{message}\n  fix: {hint}")


def did_you_mean(name: str, valid: list[str] | tuple[str, ...]) -> str:
    """A short suggestion for a misspelt key, or an empty string."""
    import difflib

    close = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""
