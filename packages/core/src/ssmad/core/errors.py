"""Errors a user can cause. Every one carries a single clear line naming the file, key or component."""

from __future__ import annotations


class SsmadError(Exception):
    """Base class: the command-line front ends print ``error: <message>`` and exit non-zero."""

    exit_code = 2


class ConfigError(SsmadError, ValueError):
    """A bad configuration key or value."""


class UnknownComponentError(ConfigError, KeyError):
    """A kind or component name that is not registered."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class MissingParameterError(ConfigError):
    """A component config without a parameter it requires; ``names`` lists the missing ones."""

    def __init__(self, message: str, names: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.names = names


class DataError(SsmadError):
    """A missing folder, an unreadable image, a wrong dataset layout."""


class CheckpointError(SsmadError):
    """A missing, corrupt or incompatible checkpoint or run folder."""


class TrainingError(SsmadError):
    """Training cannot go on (for example a NaN or infinite loss)."""


class PluginWarning(UserWarning):
    """A plugin that could not be loaded, or an ``SSMAD_PLUGINS`` entry that names no plugin: the program goes on
    without it, and says so on one line."""
