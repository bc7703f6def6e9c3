"""Drive paths: relative POSIX paths, normalised, that can never leave the drive.

A drive path is what `Drive.put` and friends take: ``"a.txt"``, ``"ckpt/3.pt"``. The root of
the drive is the empty string ``""`` (written ``"."`` by users).
"""

from __future__ import annotations

import os
import posixpath
import re

from ._exceptions import InvalidPathError, PathTypeError, shorten

#: Names starting with this prefix are kept for asyncdrive's own files beside the user's.
RESERVED_PREFIX = ".asyncdrive"
#: Longest name of one path segment, in UTF-8 bytes; leaves room for the sidecar prefix.
MAX_SEGMENT_BYTES = 200
MAX_PATH_BYTES = 4000
#: The most folders a new path may have above its file: ~1000 would take Python's recursive
#: folder walks (os.walk, of gc and folder puts) past its recursion limit. (Paths made
#: before the limit are read, and deleted, still.)
MAX_DEPTH = 255

#: NUL, the C0 control characters and DEL: never in a name.
_CONTROL = re.compile("[\x00-\x1f\x7f]")
#: The C1 control characters and the Unicode line and paragraph separators: refused in new
#: names (each would break a listing printed one name a line), read in names made before.
_NEW_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def check_path_type(drive: str, path: object, what: str = "path") -> None:
    """Raise `PathTypeError` unless ``path`` is a str or an ``os.PathLike`` (of a str).

    Example:
        >>> check_path_type("d", "a.txt")

    """
    if not isinstance(path, str | os.PathLike):
        hint = " (decode it: os.fsdecode)" if isinstance(path, bytes) else ""
        raise PathTypeError(
            f"Drive {drive!r}: {what} {shorten(repr(path), 100)} must be a str or an "
            f"os.PathLike, not {type(path).__name__}{hint}."
        )


def normalize(
    path: str | os.PathLike[str], *, drive: str, allow_root: bool = False, new: bool = False
) -> str:
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
        new: the path is to be made (a put): the rules for new names apply too.

    """
    check_path_type(drive, path)
    raw = os.fspath(path)
    if not isinstance(raw, str):  # (an os.PathLike of bytes)
        raise PathTypeError(f"Drive {drive!r}: path {raw!r} must be a str, not bytes.")
    if raw == "":
        raise _invalid(drive, raw, "it is empty. Name a file or folder, or '.' for all.")
    if (_NEW_CONTROL if new else _CONTROL).search(raw):
        raise _invalid(drive, raw, "NUL, control characters and line separators are not allowed.")
    if not raw.isascii():
        try:
            raw.encode()
        except UnicodeEncodeError:  # a lone surrogate: a local name that was not UTF-8
            raise _invalid(
                drive,
                raw,
                "it is not valid Unicode (a local name that is not UTF-8?); "
                "rename it, or pass a valid name as to=.",
            ) from None
    if raw.startswith("/"):
        raise _invalid(
            drive, raw, "drive paths are relative to the drive (and to the current directory "
            "for local files); drop the leading '/'.",
        )  # fmt: skip
    norm = posixpath.normpath(raw)
    if norm == "." or norm == "":
        if allow_root:
            return ""
        raise _invalid(drive, raw, "it names the whole drive; name a file or folder.")
    if norm == ".." or norm.startswith("../"):
        raise _invalid(drive, raw, "'..' would leave the drive; use a path inside it.")
    # A character is at most 4 bytes of UTF-8: most paths are checked without encoding.
    if len(norm) * 4 > MAX_PATH_BYTES and len(norm.encode()) > MAX_PATH_BYTES:
        raise _invalid(drive, raw, f"longer than {MAX_PATH_BYTES} bytes; choose a shorter path.")
    if new and len(norm) > 2 * MAX_DEPTH and norm.count("/") > MAX_DEPTH:
        raise _invalid(
            drive, raw, f"it has more than {MAX_DEPTH} folders above its file; nest it less."
        )
    if RESERVED_PREFIX in norm or len(norm) * 4 > MAX_SEGMENT_BYTES:
        for segment in norm.split("/"):
            if segment.startswith(RESERVED_PREFIX):
                raise _invalid(
                    drive, raw, f"names starting with {RESERVED_PREFIX!r} are reserved; rename it."
                )
            if len(segment.encode()) > MAX_SEGMENT_BYTES:
                raise _invalid(
                    drive, raw,
                    f"the name {segment[:20]!r}... is longer than {MAX_SEGMENT_BYTES} bytes; "
                    "choose a shorter name.",
                )  # fmt: skip
    return norm


def names_folder(path: str | os.PathLike[str]) -> bool:
    """Return whether ``path`` ends with ``/``: it names a folder, as for ``cp`` and POSIX.

    Example:
        >>> names_folder("ckpt/"), names_folder("ckpt")
        (True, False)

    """
    raw = os.fspath(path)
    return isinstance(raw, str) and raw.endswith("/")


def not_a_file(drive: str, path: str | os.PathLike[str]) -> InvalidPathError:
    """Return the error for a path ending with ``/`` where a file must be named."""
    reason = "it ends with '/', which names a folder; drop the '/' to name a file."
    return _invalid(drive, os.fspath(path), reason)


def _invalid(drive: str, raw: str, reason: str) -> InvalidPathError:
    error = InvalidPathError(f"Drive {drive!r}: invalid path {shorten(raw)!r}: {reason}")
    error.reason = reason
    return error


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
