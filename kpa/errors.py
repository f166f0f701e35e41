"""Errors kpa shows to users as one-line messages."""


class KpaError(Exception):
    """An error shown to the user as a one-line message, never a traceback."""

    exit_code = 2


MAX_MESSAGE = 400


class InputError(KpaError):
    def __init__(self, file: str, line: int | None, message: str) -> None:
        # Messages quote input; a value that runs to megabytes is cut.
        if len(message) > MAX_MESSAGE:
            message = message[: MAX_MESSAGE - 3] + "..."
        if len(file) > MAX_MESSAGE:
            file = file[: MAX_MESSAGE - 3] + "..."
        self.file, self.line, self.message = file, line, message
        super().__init__(f"{file}:{line}: {message}" if line is not None else f"{file}: {message}")
