"""Drive paths: relative POSIX paths, normalised, that can never leave the drive.

A drive path is what `Drive.put` and friends take: ``"a.txt"``, ``"ckpt/3.pt"``. The root of
the drive is the empty string ``""`` (written ``"."`` by users).
"""

from __future__ import annotations

import os
import posixpath

from ._exceptions import InvalidPathError

#: Names starting with this prefix are kept for asyncdrive's own files beside the user's.
RESERVED_PREFIX = ".asyncdrive"
#: Longest name of one path segment, in UTF-8 bytes; leaves room for the sidecar prefix.
MAX_SEGMENT_BYTES = 200
MAX_PATH_BYTES = 4000

_CONTROL = {chr(c) for c in range(32)} | {"\x7f"}


def normalize(path: str | os.PathLike[str], *, drive: str, allow_root: bool = False) -> str:
    """Return the normal form of a drive path, or raise `InvalidPathError`.

    Example:
        >>> normalize("./ckpt/../a.txt", drive="d")
        'a.txt'
        >>> normalize(".", drive="d", allow_root=True)
        ''

    Args:
        path: the path as the user wrote it.
        drive: the drive's name, for the error message.
        allow_root: accept ``"."`` (the whole drive) and return ``""``.

    """
    raw = os.fspath(path)
    if not isinstance(raw, str):
        raise InvalidPathError(f"Drive {drive!r}: path {raw!r} must be a str, not bytes.")
    where = f"Drive {drive!r}: invalid path {raw!r}"
    if raw == "":
        raise InvalidPathError(f"{where}: it is empty. Name a file or folder, or '.' for all.")
    if any(ch in _CONTROL for ch in raw):
        raise InvalidPathError(f"{where}: NUL and control characters are not allowed.")
    if raw.startswith("/"):
        raise InvalidPathError(
            f"{where}: drive paths are relative to the drive (and to the current directory "
            "for local files); drop the leading '/'."
        )
    norm = posixpath.normpath(raw)
    if norm == "." or norm == "":
        if allow_root:
            return ""
        raise InvalidPathError(f"{where}: it names the whole drive; name a file or folder.")
    if norm == ".." or norm.startswith("../"):
        raise InvalidPathError(f"{where}: '..' would leave the drive; use a path inside it.")
    if len(norm.encode()) > MAX_PATH_BYTES:
        raise InvalidPathError(f"{where}: longer than {MAX_PATH_BYTES} bytes.")
    for segment in norm.split("/"):
        if segment.startswith(RESERVED_PREFIX):
            raise InvalidPathError(
                f"{where}: names starting with {RESERVED_PREFIX!r} are reserved; rename it."
            )
        if len(segment.encode()) > MAX_SEGMENT_BYTES:
            raise InvalidPathError(
                f"{where}: the name {segment[:20]!r}... is longer than {MAX_SEGMENT_BYTES} bytes."
            )
    return norm


def parent_dirs(path: str) -> list[str]:
    """Return the folders that contain ``path``, from the root ``""`` down to its parent.

    Example:
        >>> parent_dirs("a/b/c.txt")
        ['', 'a', 'a/b']

    """
    parts = path.split("/")[:-1]
    return [""] + ["/".join(parts[: i + 1]) for i in range(len(parts))]


def join(folder: str, name: str) -> str:
    """Join a drive folder (``""`` for the root) and a child name.

    Example:
        >>> join("", "a.txt"), join("ckpt", "a.txt")
        ('a.txt', 'ckpt/a.txt')

    """
    return f"{folder}/{name}" if folder else name
