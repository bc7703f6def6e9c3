"""The asyncdrive error tree.

Every error raised by asyncdrive derives from `DriveError`, and every concrete error also
derives from the built-in exception a Python user would catch for the same situation, so
``except FileNotFoundError`` works as well as ``except asyncdrive.DriveError``; those that
are OSErrors carry its ``errno`` too (``ENOENT``, ``EEXIST``, ``ENOTDIR``, ``EISDIR``,
``ETIMEDOUT``; a `DriveStorageError` the disk's own)::

    DriveError
    ├── InvalidDriveIdError      (ValueError)         a malformed ``lit://`` id
    ├── InvalidPathError         (ValueError)         an absolute, escaping or empty path
    ├── InvalidConfigError       (ValueError)         a malformed ASYNCDRIVE_* setting
    ├── DriveFileNotFoundError   (FileNotFoundError)  nothing at that path
    ├── DriveFileExistsError     (FileExistsError)    owned by another component, or a folder
    │   └── VersionConflictError                      not the version ``if_version`` (or
    │                                                 ``exist_ok=False``: none) asked for
    ├── DriveNotADirectoryError  (NotADirectoryError) a file where a folder is needed
    ├── DriveIsADirectoryError   (IsADirectoryError)  a folder where a file is needed
    ├── AmbiguousPathError       (LookupError)        several components own the path
    ├── CursorExpiredError       (LookupError)        a watch cursor older than the log
    ├── DriveTimeoutError        (TimeoutError)       waited too long
    ├── IndexLostError           (RuntimeError)       Redis lost the index: rebuild_index()
    ├── DriveClosedError         (RuntimeError)       the drive was closed
    ├── DriveUnavailableError    (ConnectionError)    Redis or the server cannot be reached
    └── DriveStorageError        (OSError)            the disk refused: full, read-only, ...
        └── DrivePermissionError (PermissionError)    ... or denied access
"""

from __future__ import annotations

import ast
import errno
import os
import re
from collections.abc import Callable
from typing import Any

__all__ = [
    "AmbiguousPathError",
    "CursorExpiredError",
    "DriveClosedError",
    "DriveError",
    "DriveFileExistsError",
    "DriveFileNotFoundError",
    "DriveIsADirectoryError",
    "DriveNotADirectoryError",
    "DriveStorageError",
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

    #: The ``errno`` (and ``strerror``) an error that is also an `OSError` carries, as the
    #: built-in would from the operating system: ``exc.errno == errno.ENOENT`` holds.
    _errno: int | None = None

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        if self._errno is not None and isinstance(self, OSError):
            _give_errno(self, self._errno)

    def __str__(self) -> str:
        # OSError subclasses format themselves from (errno, strerror); we always pass one
        # ready-made message, so show it as it is.
        return str(self.args[0]) if self.args else ""


class InvalidDriveIdError(DriveError, ValueError):
    """The drive id is not of the form ``lit://<name>``."""


class InvalidPathError(DriveError, ValueError):
    """A path is absolute, leaves the drive, is empty or holds forbidden characters.

    Attributes:
        reason: what is wrong with the path, in a few words ("" where not told apart).

    """

    reason = ""


class InvalidConfigError(DriveError, ValueError):
    """A setting (argument or ``ASYNCDRIVE_*`` environment variable) has an invalid value."""


class DriveTypeError(DriveError, TypeError):
    """An argument has the wrong type.

    A path that is not a str (nor an ``os.PathLike`` of one: not None, an int, bytes), data
    that is not bytes-like (a str: encode it), a callback that cannot be called, a flag
    given as a str or None (``"false"`` is true). A drive id, path or setting of the wrong
    type (a timeout given as a str, say) is also the `InvalidDriveIdError`,
    `InvalidPathError` or `InvalidConfigError` it always was.
    """


class PathTypeError(InvalidPathError, DriveTypeError):
    """A path that is not a str (nor an ``os.PathLike`` of one)."""


class DriveIdTypeError(InvalidDriveIdError, DriveTypeError):
    """A drive id that is not a str."""


class ConfigTypeError(InvalidConfigError, DriveTypeError):
    """A setting of the wrong type (a root given as an int, say)."""


class DriveFileNotFoundError(DriveError, FileNotFoundError):
    """Nothing exists at the requested path (for the requested component)."""

    _errno = errno.ENOENT


class DriveFileExistsError(DriveError, FileExistsError):
    """The target exists already: owned by another component, a folder, or a differing file."""

    _errno = errno.EEXIST


class VersionConflictError(DriveFileExistsError):
    """A conditional write found the file in another version.

    ``if_version=N`` found it at another version (or at one, for ``if_version=0``), or
    ``exist_ok=False`` found it there already.

    Attributes:
        current_version: the version the file has now.

    """

    def __init__(self, message: str, current_version: int) -> None:
        super().__init__(message)
        self.current_version = current_version

    def __reduce__(self) -> tuple[Any, ...]:  # pickled (a process pool's worker raised it)
        return type(self), (self.args[0], self.current_version), self.__dict__


class DriveNotADirectoryError(DriveError, NotADirectoryError):
    """A file stands where a folder is needed."""

    _errno = errno.ENOTDIR


class DriveIsADirectoryError(DriveError, IsADirectoryError):
    """A folder stands where a file is needed (or ``recursive=True`` is missing)."""

    _errno = errno.EISDIR


class AmbiguousPathError(DriveError, LookupError):
    """Several components own the path and none was named.

    Attributes:
        owners: the components that own the path, sorted.

    """

    def __init__(self, message: str, owners: list[str]) -> None:
        super().__init__(message)
        self.owners = owners

    def __reduce__(self) -> tuple[Any, ...]:  # pickled (a process pool's worker raised it)
        return type(self), (self.args[0], self.owners), self.__dict__


class CursorExpiredError(DriveError, LookupError):
    """A watch cannot resume: events after its cursor were trimmed from the change log."""


class GroupInUseError(DriveError, RuntimeError):
    """A consumer group has members at work, so `Drive.remove_group` did not remove it."""


class DriveTimeoutError(DriveError, TimeoutError):
    """An operation waited longer than its timeout."""

    _errno = errno.ETIMEDOUT


class DriveClosedError(DriveError, RuntimeError):
    """The drive was closed: create a new one to use it again.

    Also raised by a call that the drive's close cut short (a writer's commit, a watch),
    and by a closed watch entered again (``async with``): watch anew, ``since=`` its cursor.
    """


class IndexLostError(DriveError, RuntimeError):
    """The drive has files on disk but no index in Redis: the server lost its data.

    Run `Drive.rebuild_index` (or ``asyncdrive rebuild-index lit://<name>``) to rebuild the
    index from the disk.
    """


class DriveUnavailableError(DriveError, ConnectionError):
    """The Redis server, or the embedded server, cannot be reached or started."""


class DriveStorageError(DriveError, OSError):
    """A disk refused a read or a write: full, over quota, read-only, denied or failing.

    The disk is the drive root's, or the local one of a `Drive.get`. ``errno``, ``strerror``
    and ``filename`` are those of the `OSError` the disk raised (also its ``__cause__``).
    What the failed call was writing is removed: a put stores nothing of the file it
    failed on (the other files of a folder put that were stored stay).

    Example:
        >>> try:
        ...     await drive.put("model.pt")
        ... except OSError as exc:  # or DriveStorageError
        ...     print(exc.errno == errno.ENOSPC)
        True

    """

    def __init__(self, message: str, cause: OSError) -> None:
        super().__init__(message)
        self.errno, self.strerror = cause.errno, cause.strerror
        self.filename = _disk_name(cause.filename)

    def __reduce__(self) -> tuple[Any, ...]:  # pickled (a process pool's worker raised it)
        cause = OSError(self.errno, self.strerror, self.filename)
        return type(self), (self.args[0], cause), self.__dict__


def _give_errno(error: OSError, number: int) -> None:
    error.errno, error.strerror = number, os.strerror(number)


def _disk_name(filename: object) -> str | bytes | None:
    """Return the ``filename`` of an `OSError` worth showing: None for a ``/proc/self/fd`` one.

    Such is the name of a file being linked into place, which has none yet: of no use; as
    is the descriptor an fd-based call (``os.setxattr(fd, ...)``) gives for its filename.
    """
    if not isinstance(filename, str | bytes):
        return None
    if os.fsdecode(filename).startswith("/proc/self/fd/"):
        return None
    return filename


class DrivePermissionError(DriveStorageError, PermissionError):
    """The disk denied access (EACCES, EPERM): a folder not writable, or immutable."""


#: What an errno of the disk means, and what to do about it.
_DISK_TROUBLE: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on the disk", "Free space on it, then retry."),
    errno.EDQUOT: ("the disk quota is used up", "Free space or raise the quota, then retry."),
    errno.EFBIG: (
        "the file is larger than this process or the filesystem may write",
        "Raise the file-size limit ('ulimit -f') or store the data in smaller files.",
    ),
    errno.EROFS: (
        "the filesystem is mounted read-only",
        "Remount it read-write, or give the drive a writable root (root= or ASYNCDRIVE_ROOT).",
    ),
    errno.EACCES: (
        "permission denied",
        "Give this user write access there, or use a root of its own (root= or ASYNCDRIVE_ROOT).",
    ),
    errno.EIO: ("the disk reported an I/O error", "Check the disk or the network mount."),
    errno.ENAMETOOLONG: (
        "a name or path is too long for the filesystem",
        "Use shorter names, or fewer folders above the file.",
    ),
    errno.ELOOP: (
        "too many symbolic links on the way (a link loop?)",
        "Fix or remove the link, or name the files it points to.",
    ),
    errno.ENOENT: (
        "a file or folder went away while in use",
        "Check that nothing else removes it meanwhile, then retry.",
    ),
    errno.EMFILE: (
        "this process has too many files open",
        "Raise its limit ('ulimit -n', or resource.setrlimit(RLIMIT_NOFILE)), or run fewer "
        "calls at once.",
    ),
    errno.ENFILE: (
        "the system has too many files open",
        "Close files elsewhere, or raise the system's limit (fs.file-max), then retry.",
    ),
}
_DISK_TROUBLE[errno.EPERM] = _DISK_TROUBLE[errno.EACCES]
#: What to do instead where a get's local side refused (it writes only there).
_LOCAL_FIX = {
    errno.EACCES: "Give this user write access to that local folder, or get to another (to=).",
    errno.EROFS: "Get to a folder on a writable filesystem (to=).",
}
_LOCAL_FIX[errno.EPERM] = _LOCAL_FIX[errno.EACCES]
#: What to do where reading was refused: access to read, not to write.
_READ_FIX = (
    "Give this user read access there (and to the folders above it), or run it as one who has."
)
#: ...by the passes that read every folder of the drive and remove what they find stray.
_READ_ALL_FIX = (
    "Run it as a user who can read, and write, all of the drive's folders, or give this "
    "user that access."
)
#: The calls that only read the drive (their local side, if any, is written: get's).
_READING = frozenset(
    {"read_bytes", "open", "get", "get a folder", "info", "exists", "list", "list_info"}
)
_LEFT_AS_IT_WAS = {
    "put": "That file was not stored: its copy in the drive, if any, is as it was.",
    "write_bytes": "Nothing was stored: the drive is as it was.",
    "write": "Nothing was stored: the upload was dropped (open the file again to retry).",
    "close": "Nothing was stored: the upload was dropped.",
    "get": "The local file was left as it was.",
    "get a folder": "The files got before it stay; that file was left as it was.",
    "rebuild_index": (
        "Nothing was changed: rebuilt from the folders it can read, the index would lose the "
        "files of the others."
    ),
    "gc": (
        "gc() stopped there: it removes no file, and drops no index entry, in a drive it "
        "cannot see whole."
    ),
    # The index lets a file go before its bytes (a reader never finds an entry without them).
    "delete": (
        "The drive no longer lists it (nor what this call deleted before it), but the bytes "
        "that could not be removed stay on the disk until gc() removes them."
    ),
}


#: A str's repr in a message: in ' quotes, or in " where it holds a ' (and then escaped
#: inside, where it holds both).
_STR_REPR = r"""('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")"""


def rewrite_list_hints(message: str, ls: Callable[[str], str]) -> str:
    """Return ``message`` with its hints ``list('folder')`` written as ``ls(folder)`` says.

    For the command line's and fsspec's words for a listing.

    Example:
        >>> rewrite_list_hints("check it with list('a')", lambda f: f"ls {f}")
        'check it with ls a'

    """

    def rewritten(match: re.Match[str]) -> str:
        try:
            folder = ast.literal_eval(match[1])
        except (ValueError, SyntaxError):  # (not a repr of ours after all: left as it is)
            return match[0]
        return ls(folder) if isinstance(folder, str) else match[0]

    message = re.sub(rf"list\(\) \(e\.g\. list\({_STR_REPR}\)\)", rewritten, message)
    return re.sub(rf"list\({_STR_REPR}\)", rewritten, message)


def shorten(text: str, limit: int = 160) -> str:
    """Return ``text`` for a message: its start and end around "...", if it is long.

    Example:
        >>> shorten("a" * 300, 20)
        'aaaaaaaaa...aaaaaaaa'

    """
    if len(text) <= limit:
        return text
    keep = limit - 3
    return f"{text[: keep - keep // 2]}...{text[-(keep // 2) :]}"


class ExplainedOSError(OSError):
    """An `OSError` of the disk that says what it means here, and what to do (`storage_error`).

    For refusals whose usual meaning would mislead: a hard link refused by
    ``fs.protected_hardlinks`` is no missing write access to the folder.
    """

    def __init__(self, number: int, filename: str | None, reason: str, fix: str) -> None:
        super().__init__(number, os.strerror(number), filename)
        self.reason, self.fix = reason, fix


def storage_error(
    drive: str,
    exc: OSError,
    doing: str,
    path: str | os.PathLike[str] | None,
    to: str | os.PathLike[str] | None = None,
    drive_dir: str | os.PathLike[str] | None = None,
    *,
    reading: bool | None = None,
    left: str | None = None,
) -> DriveStorageError:
    """Make the `DriveStorageError` for ``exc``, raised while ``doing`` ``path`` (``to``).

    ``drive_dir``: the drive's folder on the shared disk, where the drive side's errors
    name their files (a get's others are the local side's). ``reading``: whether the call
    only reads the drive (a refusal then asks for access to read); by default, as the
    calls named ``doing`` do. ``left``: what the call left as it was, where not what
    ``doing`` leaves.
    """
    reading = doing in _READING if reading is None else reading
    reason, fix = _DISK_TROUBLE.get(exc.errno or 0, (exc.strerror or str(exc), ""))
    if isinstance(exc, ExplainedOSError):
        reason, fix = exc.reason, exc.fix
    refused_at = os.fsdecode(exc.filename) if isinstance(exc.filename, str | bytes) else ""
    drive_folder = "" if drive_dir is None else os.fspath(drive_dir)
    on_the_drive = bool(drive_folder) and refused_at.startswith(drive_folder + os.sep)
    refused = exc.errno in (errno.EACCES, errno.EPERM)
    if doing.startswith("get") and not on_the_drive:
        fix = _LOCAL_FIX.get(exc.errno or 0, fix)
    elif doing in ("gc", "rebuild_index") and refused:
        fix = _READ_ALL_FIX
    elif exc.errno == errno.EACCES and (reading or (doing == "put" and not on_the_drive)):
        fix = _READ_FIX  # (a put reads its local side)
    elif refused and refused_at.startswith(os.path.join(drive_folder, ".tmp")) and on_the_drive:
        # The uploads' folder is only the first place refused: the files go elsewhere next.
        fix = (
            f"Give this user write access to the drive's folders ({shorten(drive_folder)} and "
            "those below it), or use a root of its own (root= or ASYNCDRIVE_ROOT)."
        )
    filename = _disk_name(exc.filename)
    where = f" ({shorten(os.fsdecode(filename))})" if filename else ""
    what = doing if path is None else f"{doing} {shorten(os.fspath(path))!r}"
    if to is not None:
        what += f" to {shorten(os.fspath(to))!r}"
    fix = fix or "Check the disk (or the mount), then retry."
    left = _LEFT_AS_IT_WAS.get(doing, "") if left is None else left
    kind = DrivePermissionError if refused else DriveStorageError
    return kind(f"Drive {drive!r}: cannot {what}: {reason}{where}. {fix} {left}".rstrip(), exc)
