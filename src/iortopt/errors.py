"""Exception types with messages meant for users; the CLI maps them to exit codes."""


class IortoptError(Exception):
    """Base class of errors caused by user input (exit code 2 in the CLI)."""


class SourceDataError(IortoptError):
    """A TG-43 source data file is missing, malformed or physically implausible."""


class ConfigError(IortoptError):
    """A plan or run configuration is invalid."""


class InputFileError(IortoptError):
    """An input file (points, dwells, ...) is missing or malformed."""


class PlanFailedError(Exception):
    """A plan's computed result is unusable (e.g. NaN/inf dwell times or dose): not a user input
    error, so not an :class:`IortoptError` (the CLI exits 1, having written nothing)."""
