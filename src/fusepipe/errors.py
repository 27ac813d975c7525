"""Errors a user can hit. Each message is one line naming the file, row or key, and the fix."""


class FusepipeError(Exception):
    """Base class: the CLI prints `error: <message>` and exits 2 (traceback only with --debug)."""


class ConfigError(FusepipeError):
    """The configuration is invalid."""


class DataError(FusepipeError):
    """An input dataset row or file is malformed."""


class ArtifactError(FusepipeError):
    """An artifact is missing, incomplete or has the wrong schema."""
