"""The asyncdrive error tree.

Every error raised by asyncdrive derives from `DriveError`, and every concrete error also
derives from the built-in exception a Python user would catch for the same situation, so
``except FileNotFoundError`` works as well as ``except asyncdrive.DriveError``::

    DriveError
    ├── InvalidDriveIdError      (ValueError)         a malformed ``lit://`` id
    ├── InvalidPathError         (ValueError)         an absolute, escaping or empty path
    ├── InvalidConfigError       (ValueError)         a malformed ASYNCDRIVE_* setting
    ├── DriveFileNotFoundError   (FileNotFoundError)  nothing at that path
    ├── DriveFileExistsError     (FileExistsError)    owned by another component, or a folder
    │   └── VersionConflictError                      not the version ``if_version`` named
    ├── DriveNotADirectoryError  (NotADirectoryError) a file where a folder is needed
    ├── DriveIsADirectoryError   (IsADirectoryError)  a folder where a file is needed
    ├── AmbiguousPathError       (LookupError)        several components own the path
    ├── CursorExpiredError       (LookupError)        a watch cursor older than the log
    ├── DriveTimeoutError        (TimeoutError)       waited too long
    ├── IndexLostError           (RuntimeError)       Redis lost the index: rebuild_index()
    └── DriveUnavailableError    (ConnectionError)    Redis or the server cannot be reached
"""

from __future__ import annotations

__all__ = [
    "AmbiguousPathError",
    "CursorExpiredError",
    "DriveError",
    "DriveFileExistsError",
    "DriveFileNotFoundError",
    "DriveIsADirectoryError",
    "DriveNotADirectoryError",
    "DriveTimeoutError",
    "DriveUnavailableError",
    "IndexLostError",
    "InvalidConfigError",
    "InvalidDriveIdError",
    "InvalidPathError",
    "VersionConflictError",
]


class DriveError(Exception):
    """Base class of every error raised by asyncdrive.

    Example:
        >>> try:
        ...     Drive("s3://bucket")
        ... except DriveError as exc:
        ...     print(type(exc).__name__)
        InvalidDriveIdError

    """

    def __str__(self) -> str:
        # OSError subclasses format themselves from (errno, strerror); we always pass one
        # ready-made message, so show it as it is.
        return str(self.args[0]) if self.args else ""


class InvalidDriveIdError(DriveError, ValueError):
    """The drive id is not of the form ``lit://<name>``."""


class InvalidPathError(DriveError, ValueError):
    """A path is absolute, leaves the drive, is empty or holds forbidden characters."""


class InvalidConfigError(DriveError, ValueError):
    """A setting (argument or ``ASYNCDRIVE_*`` environment variable) has an invalid value."""


class DriveFileNotFoundError(DriveError, FileNotFoundError):
    """Nothing exists at the requested path (for the requested component)."""


class DriveFileExistsError(DriveError, FileExistsError):
    """The target exists already: owned by another component, a folder, or a differing file."""


class VersionConflictError(DriveFileExistsError):
    """A conditional write (``if_version=``) found the file in another version.

    Attributes:
        current_version: the version the file has now.

    """

    def __init__(self, message: str, current_version: int) -> None:
        super().__init__(message)
        self.current_version = current_version


class DriveNotADirectoryError(DriveError, NotADirectoryError):
    """A file stands where a folder is needed."""


class DriveIsADirectoryError(DriveError, IsADirectoryError):
    """A folder stands where a file is needed (or ``recursive=True`` is missing)."""


class AmbiguousPathError(DriveError, LookupError):
    """Several components own the path and none was named.

    Attributes:
        owners: the components that own the path, sorted.

    """

    def __init__(self, message: str, owners: list[str]) -> None:
        super().__init__(message)
        self.owners = owners


class CursorExpiredError(DriveError, LookupError):
    """A watch cannot resume: events after its cursor were trimmed from the change log."""


class DriveTimeoutError(DriveError, TimeoutError):
    """An operation waited longer than its timeout."""


class IndexLostError(DriveError, RuntimeError):
    """The drive has files on disk but no index in Redis: the server lost its data.

    Run `Drive.rebuild_index` (or ``asyncdrive rebuild-index lit://<name>``) to rebuild the
    index from the disk.
    """


class DriveUnavailableError(DriveError, ConnectionError):
    """The Redis server, or the embedded server, cannot be reached or started."""
