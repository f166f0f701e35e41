"""Errors kpa shows to users as one-line messages."""


class KpaError(Exception):
    """An error shown to the user as a one-line message, never a traceback."""

    exit_code = 2


class InputError(KpaError):
    def __init__(self, file: str, line: int | None, message: str) -> None:
        self.file, self.line, self.message = file, line, message
        super().__init__(f"{file}:{line}: {message}" if line is not None else f"{file}: {message}")
