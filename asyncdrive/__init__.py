"""asyncdrive: share files between Python processes through a shared disk and Redis.

Example (in ``python -m asyncio``, or inside a coroutine):
    >>> from pathlib import Path
    >>> from asyncdrive import Drive
    >>> async with Drive("lit://drive_1") as drive:
    ...     _ = Path("a.txt").write_text("Hello World !")
    ...     await drive.put("a.txt")
    ...     await drive.list(".")
    ...     await drive.delete("a.txt")
    ['a.txt']

"""

import logging
from typing import TYPE_CHECKING

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
    DriveTypeError,
    DriveUnavailableError,
    GroupInUseError,
    IndexLostError,
    InvalidConfigError,
    InvalidDriveIdError,
    InvalidPathError,
    VersionConflictError,
)
from ._files import DriveReader, DriveWriter, Opening
from ._models import FileInfo, FolderInfo, GcReport, GroupInfo
from ._progress import ProgressCallback
from ._server import server_binary, server_url, stop_server
from ._sync import SyncDrive, SyncDriveReader, SyncDriveWriter, SyncWatch
from ._watch import Watch

__version__ = "0.1.0"

# A library leaves output to the application: without logging configured, nothing is printed.
logging.getLogger("asyncdrive").addHandler(logging.NullHandler())


if TYPE_CHECKING:
    from ._fsspec import DriveFileSystem as DriveFileSystem  # (not in __all__: fsspec is optional)
else:

    def __getattr__(name: str) -> object:
        # The fsspec filesystem needs the optional fsspec package: imported when asked for.
        # (Not for type checkers, which see the import above, and no other name.)
        if name == "DriveFileSystem":
            from ._fsspec import DriveFileSystem

            return DriveFileSystem
        raise AttributeError(f"module 'asyncdrive' has no attribute {name!r}")

    def __dir__() -> list[str]:
        return [*globals(), "DriveFileSystem"]


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
    "DriveTypeError",
    "DriveUnavailableError",
    "DriveWriter",
    "FileInfo",
    "FolderInfo",
    "GcReport",
    "GroupInUseError",
    "GroupInfo",
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
