"""The one error family of the runtime. Messages name the file or topic, the key, the value found
and what was expected, so a user can fix the input without reading a traceback."""

from __future__ import annotations

__all__ = ["ConfigError", "DecodeError", "DrivecastError"]


class DrivecastError(Exception):
    """Base of every error the runtime raises on purpose (the CLI prints these as one line)."""


class ConfigError(DrivecastError, ValueError):
    """A launch file, a parameter or a command-line value is wrong. A node's `setup()` raises it
    for bad params: the node exits with code 2 and the launcher does not respawn it."""


class DecodeError(DrivecastError):
    """Bytes from a socket or a file are not a valid message. `kind` groups errors for counting."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
