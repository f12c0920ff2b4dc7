"""The project's exception types. The CLI turns any of them into one clean line."""


class GanviewsError(Exception):
    """Base class of every error the library raises on purpose."""


class CheckpointError(GanviewsError):
    """A weights file is missing, unreadable, unsafe or does not fit the expected architecture."""


class ConfigError(GanviewsError, ValueError):
    """A configuration value is missing, unknown or out of range. The message names the key."""


class ImageError(GanviewsError):
    """One input image cannot be used; the reason is recorded for that image only."""
