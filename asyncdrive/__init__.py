"""asyncdrive: share files between Python processes through a shared disk and Redis.

Example:
    >>> from asyncdrive import Drive
    >>> async with Drive("lit://drive_1") as drive:
    ...     await drive.put("a.txt")
    ...     await drive.list(".")
    ['a.txt']

"""

import logging

from ._config import default_root
from ._drive import Drive
from ._events import Change, DriveEvent
from ._exceptions import (
    AmbiguousPathError,
    CursorExpiredError,
    DriveClosedError,
    DriveError,
    DriveFileExistsError,
    DriveFileNotFoundError,
    DriveIsADirectoryError,
    DriveNotADirectoryError,
    DrivePermissionError,
    DriveStorageError,
    DriveTimeoutError,
    DriveUnavailableError,
    IndexLostError,
    InvalidConfigError,
    InvalidDriveIdError,
    InvalidPathError,
    VersionConflictError,
)
from ._files import DriveReader, DriveWriter, Opening
from ._models import FileInfo, FolderInfo, GcReport
from ._progress import ProgressCallback
from ._server import server_binary, server_url, stop_server
from ._sync import SyncDrive, SyncDriveReader, SyncDriveWriter, SyncWatch
from ._watch import Watch

__version__ = "0.1.0"

# A library leaves output to the application: without logging configured, nothing is printed.
logging.getLogger("asyncdrive").addHandler(logging.NullHandler())


def __getattr__(name: str) -> object:
    # The fsspec filesystem needs the optional fsspec package: import it only when asked.
    if name == "DriveFileSystem":
        from ._fsspec import DriveFileSystem

        return DriveFileSystem
    raise AttributeError(f"module 'asyncdrive' has no attribute {name!r}")


__all__ = [
    "AmbiguousPathError",
    "Change",
    "CursorExpiredError",
    "Drive",
    "DriveClosedError",
    "DriveError",
    "DriveEvent",
    "DriveFileExistsError",
    "DriveFileNotFoundError",
    "DriveIsADirectoryError",
    "DriveNotADirectoryError",
    "DrivePermissionError",
    "DriveReader",
    "DriveStorageError",
    "DriveTimeoutError",
    "DriveUnavailableError",
    "DriveWriter",
    "FileInfo",
    "FolderInfo",
    "GcReport",
    "IndexLostError",
    "InvalidConfigError",
    "InvalidDriveIdError",
    "InvalidPathError",
    "Opening",
    "ProgressCallback",
    "SyncDrive",
    "SyncDriveReader",
    "SyncDriveWriter",
    "SyncWatch",
    "VersionConflictError",
    "Watch",
    "__version__",
    "default_root",
    "server_binary",
    "server_url",
    "stop_server",
]
