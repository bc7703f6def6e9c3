"""`DriveFileSystem`: the drives of a root as an fsspec filesystem, protocol ``lit``.

Registered through the ``fsspec.specs`` entry point, so that any fsspec-aware library opens
drive files by URL, the drive name being the first segment of the path::

    >>> import fsspec, pandas
    >>> with fsspec.open("lit://drive_1/a.csv", "w") as f:
    ...     f.write("x,y")
    >>> pandas.read_csv("lit://drive_1/a.csv")

Reads open one version of a file and keep it to the end; writes stream into an upload that is
committed when the file is closed, and dropped if the ``with`` block fails. Nothing is cached
between calls: every listing is read from the index, so none is ever stale.

fsspec is an optional dependency (``pip install 'asyncdrive[fsspec]'``); importing asyncdrive
does not import it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import datetime
import difflib
import functools
import io
import itertools
import numbers
import os
import re
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from fsspec.asyn import AsyncFileSystem, get_loop, sync
from fsspec.callbacks import DEFAULT_CALLBACK, Callback
from fsspec.compression import compr
from fsspec.core import get_compression
from fsspec.spec import AbstractBufferedFile

from . import _paths, _portal
from ._config import (
    absolute_root,
    check_component_name,
    check_flag,
    is_valid_name,
    redact_url,
    resolve_root,
)
from ._drive import Drive, FolderNotFileError, _local_file_above
from ._exceptions import (
    AmbiguousPathError,
    ConfigTypeError,
    DriveClosedError,
    DriveError,
    DriveFileExistsError,
    DriveFileNotFoundError,
    DriveIsADirectoryError,
    DriveNotADirectoryError,
    InvalidConfigError,
    InvalidPathError,
    PathTypeError,
    rewrite_list_hints,
    shorten,
)
from ._files import DriveReader, DriveWriter, _closed_error
from ._models import FileInfo, FolderInfo
from ._progress import ProgressCallback
from ._threads import in_a_disk_thread

__all__ = ["DriveFileSystem"]

#: A copy between drives is read and written in pieces of this size.
_PIECE = 4 << 20
#: How long closing the drives at interpreter exit may take.
_CLOSE_TIMEOUT = 10.0
#: How many drives not in use the filesystems of a process keep connected, together (the
#: ones used last): fsspec keeps an instance for each set of arguments, and a drive kept
#: holds two connections.
_KEPT_DRIVES = 16
#: Every filesystem of this process (for `_KEPT_DRIVES`), and a count of drive uses.
_filesystems: weakref.WeakValueDictionary[int, DriveFileSystem] = weakref.WeakValueDictionary()
_uses = itertools.count()


def _used_last() -> set[tuple[int, str]]:
    """Return the `_KEPT_DRIVES` drives used last by the filesystems: (id(filesystem), name)."""
    uses: list[tuple[int, int, str]] = []
    for filesystem in list(_filesystems.values()):
        with filesystem._drives_lock:
            last = filesystem._last_use
            uses.extend((last.get(name, 0), id(filesystem), name) for name in filesystem._drives)
    uses.sort(reverse=True)
    return {(fs_id, name) for _, fs_id, name in uses[:_KEPT_DRIVES]}


def _kept_in_all() -> int:
    return sum(len(filesystem._drives) for filesystem in list(_filesystems.values()))


def _file_entry(name: str, info: FileInfo) -> dict[str, Any]:
    return {
        "name": name,
        "size": info.size,
        "type": "file",
        "mtime": info.mtime,
        "checksum": info.checksum,
        "version": info.version,
        "component_name": info.component_name,
    }


def _dir_entry(name: str) -> dict[str, Any]:
    return {"name": name, "size": 0, "type": "directory"}


def _close_drives(
    pid: int, loop: asyncio.AbstractEventLoop | None, drives: dict[str, Drive]
) -> None:
    """Close a filesystem's drives: at garbage collection or interpreter exit."""
    if pid != os.getpid() or not drives:
        return  # a forked child: the parent's drives are not this process's to close
    if loop is not None and loop.is_running() and not loop.is_closed():
        with contextlib.suppress(Exception):
            sync(loop, _aclose_all, list(drives.values()), timeout=_CLOSE_TIMEOUT)
    drives.clear()


@atexit.register
def _close_all_at_exit() -> None:
    """Close every filesystem's drives at interpreter exit (their finalizers, then).

    Not by `weakref.finalize`'s own exit handler, which may run before asyncdrive's: the
    daemon threads whose calls this cuts short end quietly (`_portal`'s hook) first.
    """
    _portal.quiet_closed_drives_at_exit()
    for filesystem in list(_filesystems.values()):
        # Detached and called: calling it does nothing once weakref's own exit handler
        # has run (it may run first), though it left these (``atexit=False``) alone.
        detached = filesystem._finalizer.detach()
        if detached is not None:
            _, close, args, _ = detached
            close(*args)


def _reporting_to(callback: Callback) -> ProgressCallback:
    """Feed an fsspec ``callback`` from a put's or a get's ``progress=``."""

    def report(done: int, total: int) -> None:
        if callback.size != total:
            callback.set_size(total)
        callback.absolute_update(done)

    return report


async def _aclose_all(drives: Iterable[Drive]) -> None:
    for drive in drives:
        await drive.aclose()


T = TypeVar("T")

#: A glob's special characters, as fsspec's ``expand_path`` looks for them.
_GLOB = re.compile(r"[*?\[]")

#: The library's hints, as an fsspec user takes them (see `_in_fsspec_terms`).
_FSSPEC_TERMS = {
    "exist_ok=False (or if_version=0) asked to create only": (
        "mode 'xb' (or pipe's mode='create') asked to create only"
    ),
    "pass component_name= to choose one": "pass component_name= (a storage option) to choose one",
    "create the drive with allow_duplicates=True": "pass allow_duplicates=True as a storage option",
    "(delete(path, recursive=True))": "(fs.rm(path, recursive=True))",
    "use a Drive created with that component_name": "pass that component_name (a storage option)",
    "Pass to= another local folder": "Pass another local path",
    "or get to another (to=).": "or get to another.",
    "Get to a folder on a writable filesystem (to=).": "Get to a writable filesystem.",
    "rename it, or pass a valid name as to=.": "rename it.",
}


def _in_fsspec_terms(message: str, name: str) -> str:
    """Return the library's error ``message`` with its hints as an fsspec user takes them.

    ``list('a')`` is ``fs.ls('lit://d/a')`` here, ``if_version=`` a write with mode 'wb', ...
    """

    def ls(folder: str) -> str:
        return f"fs.ls({f'lit://{name}' if folder == '.' else f'lit://{name}/{folder}'!r})"

    message = rewrite_list_hints(message, ls)
    message = re.sub(
        r"Pass if_version=\d+ to replace that version, or delete it first",
        "Write it with mode 'wb' to replace it, or rm it first",
        message,
    )
    message = re.sub(
        r"Pass to= a file path \(to=('[^']*'), say\)", r"Name a file (\1, say)", message
    )
    message = re.sub(
        r"\b(gc|rebuild_index)\(\)",
        lambda m: f"'asyncdrive {m[1].replace('_', '-')} lit://{name}'",
        message,
    )
    for library, fsspec in _FSSPEC_TERMS.items():
        message = message.replace(library, fsspec)
    return message


def _fsspec_terms(
    drive_arg: int = 0,
) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """Give the errors of a filesystem coroutine fsspec's terms (see `_in_fsspec_terms`).

    ``drive_arg``: which positional argument is the drive URL (or URLs).
    """

    def decorate(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(method)
        async def wrapper(self: DriveFileSystem, *args: Any, **kwargs: Any) -> T:
            try:
                return await method(self, *args, **kwargs)
            except DriveError as exc:
                url = args[drive_arg] if len(args) > drive_arg else ""
                url = url[0] if isinstance(url, list) and url else url
                name = ""
                with contextlib.suppress(DriveError):  # (not a drive URL: no hint names it)
                    name = self._split(str(url))[0]
                _give_fsspec_terms(exc, name)
                raise

        return wrapper

    return decorate


def _give_fsspec_terms(exc: DriveError, name: str) -> None:
    """Rewrite the message of ``exc``, raised for drive ``name``, in fsspec's terms."""
    exc.args = (_in_fsspec_terms(str(exc), name), *exc.args[1:])


class _Environment:
    """Stands for the drive configuration in ``os.environ`` where fsspec tokenizes (repr)."""

    def __repr__(self) -> str:
        return repr(sorted((k, v) for k, v in os.environ.items() if k.startswith("ASYNCDRIVE_")))


#: The options of our own, and the ones fsspec's base classes take (the rest they ignore).
_OWN_OPTIONS = ("component_name", "allow_duplicates", "root", "redis_url")
_FSSPEC_OPTIONS = (
    "asynchronous", "loop", "batch_size", "skip_instance_cache", "use_listings_cache",
    "listings_expiry_time", "max_paths",
)  # fmt: skip
#: Options of fsspec's files that ``fsspec.open(url, **options)`` hands to the filesystem:
#: taken, and left to each ``open`` (where they mean something here).
_FILE_OPTIONS = ("block_size", "cache_type", "cache_options")


def _refuse_unknown_options(options: dict[str, Any]) -> None:
    """Raise `DriveTypeError` for an option fsspec would take and ignore: a typo, say.

    ``componet_name="loader"`` would else be dropped, and the files written as "default".
    The `_FILE_OPTIONS` ``fsspec.open`` hands over are taken out of ``options``.
    """
    for name in _FILE_OPTIONS:
        options.pop(name, None)
    unknown = sorted(set(options) - set(_FSSPEC_OPTIONS))
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, _OWN_OPTIONS + _FSSPEC_OPTIONS, n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ConfigTypeError(
        f"The lit:// filesystem has no option {', '.join(hints)}. Its options: "
        f"{', '.join(_OWN_OPTIONS)}; and fsspec's {', '.join(_FSSPEC_OPTIONS)}."
    )


def _make_folders(local: str) -> None:
    """Make the local folder ``local`` and those above it, if missing."""
    os.makedirs(local, exist_ok=True)


def _file_at_or_above(local: str) -> str | None:
    """Return the local file at ``local``, or where a folder above it should be, if any."""
    return local if os.path.isfile(local) else _local_file_above(Path(local))


def _paths_in(paths: object) -> list[object]:
    """Return the paths of a list (or other collection) of them; a non-collection: itself."""
    if isinstance(paths, list | tuple | set | frozenset):
        return list(paths)
    return [paths]


def _check_maxdepth(maxdepth: object) -> None:
    """Raise unless ``maxdepth`` is None or a whole number of 1 or more (fsspec's rule)."""
    if maxdepth is None:
        return
    if not isinstance(maxdepth, numbers.Integral) or isinstance(maxdepth, bool):  # (numpy's)
        raise ConfigTypeError(
            f"maxdepth={shorten(repr(maxdepth), 100)} must be an int (1 or more) or None, "
            f"not {type(maxdepth).__name__}."
        )
    if maxdepth < 1:
        raise InvalidConfigError(
            f"maxdepth={maxdepth!r} must be 1 or more (1: the folder's own entries), or "
            "None for no limit."
        )


def _check_path_type(path: object) -> None:
    """Raise `PathTypeError` unless ``path`` is a str or an os.PathLike of one."""
    _path_str(path)


def _path_str(path: object) -> str:
    """Return ``path`` as a str (a PathLike's), or raise `PathTypeError` (bytes, None...)."""
    text = os.fspath(path) if isinstance(path, str | os.PathLike) else None
    if not isinstance(text, str):
        raise PathTypeError(
            f"{shorten(repr(path), 100)} is not a path: lit:// paths are str "
            f"('lit://<drive>/<path>'), not {type(path).__name__}."
        )
    return text


class DriveFileSystem(AsyncFileSystem):  # type: ignore[misc]  # fsspec is untyped
    """The drives under one root as an fsspec filesystem: ``lit://<drive>/<path>``.

    Use it through fsspec (``fsspec.filesystem("lit")``, ``fsspec.open("lit://d/a.csv")``)
    or any library that takes fsspec URLs; the keyword arguments are those of `Drive`, and
    are passed as ``storage_options``.

    Example:
        >>> fs = fsspec.filesystem("lit")
        >>> fs.pipe_file("lit://d/a.txt", b"Hello World !")
        >>> fs.ls("lit://d", detail=False)
        ['d/a.txt']
        >>> pandas.read_csv("lit://d/a.csv", storage_options={"component_name": "loader"})

    Args:
        component_name: who is writing, and whose copy to read when several components own
            a path (else reading such a path raises `AmbiguousPathError`).
        allow_duplicates: see `Drive`.
        root: the shared directory; default ``$ASYNCDRIVE_ROOT``, else the per-user one.
        redis_url: the Redis server; default ``$ASYNCDRIVE_REDIS_URL``, else the embedded one.

    """

    protocol = "lit"
    root_marker = ""
    # fsspec caches instances by their arguments, and by these: one made before the
    # environment changed ($ASYNCDRIVE_ROOT, ...) is not given for the new one.
    _extra_tokenize_attributes = ("_environment",)
    _environment = _Environment()

    def __init__(
        self,
        *,
        component_name: str | None = None,
        allow_duplicates: bool = False,
        root: str | os.PathLike[str] | None = None,
        redis_url: str | None = None,
        **kwargs: Any,
    ) -> None:
        # Checked here, as a Drive checks them: else only at the first call, as a drive's.
        _refuse_unknown_options(kwargs)
        if component_name is not None:
            check_component_name(component_name)
        check_flag("", "allow_duplicates", allow_duplicates)
        if redis_url is not None and not isinstance(redis_url, str):
            raise ConfigTypeError(
                f"redis_url={shorten(repr(redis_url), 100)} must be a str, not "
                f"{type(redis_url).__name__}."
            )
        super().__init__(**kwargs)
        self._drive_args: dict[str, Any] = {
            "component_name": component_name,
            "allow_duplicates": allow_duplicates,
            # (A relative root is the current folder's now, not that of each later call.)
            "root": absolute_root(root),
            "redis_url": redis_url,
        }
        self._read_component = component_name
        self._drives: dict[str, Drive] = {}
        #: Calls and open files using each drive (see `_using`), and drives handed out.
        self._users: dict[str, int] = {}
        self._pinned: set[str] = set()
        #: When each drive was used last (a count of `_uses`).
        self._last_use: dict[str, int] = {}
        #: Guards the four: files in other threads take drives and give them back.
        self._drives_lock = threading.Lock()
        _filesystems[id(self)] = self  # (by id: fsspec hashes an instance once it is made)
        self._finalizer = weakref.finalize(
            self, _close_drives, os.getpid(), self._loop, self._drives
        )
        self._finalizer.atexit = False  # (`_close_all_at_exit` calls it)

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the filesystem runs on (fsspec's IO thread, in blocking use)."""
        if getattr(self, "_pid", None) != os.getpid() and not self.asynchronous:
            # Forked: the parent's loop thread does not exist here. Start afresh, as fsspec
            # does for the instances it caches; the drives reconnect by themselves.
            self._pid = os.getpid()
            self._loop = get_loop()
            self._drives, self._users, self._pinned, self._last_use = {}, {}, set(), {}
            self._drives_lock = threading.Lock()
            self._finalizer = weakref.finalize(
                self, _close_drives, self._pid, self._loop, self._drives
            )
            self._finalizer.atexit = False
        loop: asyncio.AbstractEventLoop | None = self._loop
        return loop

    def __repr__(self) -> str:
        shown = {
            k: redact_url(v) if k == "redis_url" and v else v for k, v in self._drive_args.items()
        }
        given = ", ".join(f"{k}={v!r}" for k, v in shown.items() if v)
        return f"DriveFileSystem({given})"

    # -- drives and paths --------------------------------------------------------------------

    def drive(self, name: str) -> Drive:
        """Return the `Drive` named ``name`` this filesystem uses (made on first use).

        Kept until the filesystem closes (the drives it uses by itself, only while in use
        or among the last it used: see `_using`).
        """
        with self._drives_lock:
            self._pinned.add(name)
            return self._kept(name)

    def _kept(self, name: str) -> Drive:
        """Return the drive ``name``, made if none is kept, as the one used last (locked)."""
        drive = self._drives.pop(name, None)
        if drive is None:
            drive = Drive(f"lit://{name}", **self._drive_args)
            # Reads take this component's copy where several own a path, else the owner's.
            drive._read_first = self._read_component
        self._drives[name] = drive
        self._last_use[name] = next(_uses)
        return drive

    @contextlib.asynccontextmanager
    async def _using(self, name: str) -> AsyncIterator[Drive]:
        """Lend the drive ``name`` for one call; then close the drives no longer needed.

        Each drive holds two connections: one per drive name ever used (a run's own
        drive, say) would add up to thousands. Kept: those in use (a call, an open
        file), those handed out by `drive`, and the `_KEPT_DRIVES` used last by any
        filesystem of the process.
        """
        drive = self._lend(name)
        try:
            yield drive
        finally:
            self._release(name)
            await self._close_unneeded()

    def _lend(self, name: str) -> Drive:
        """Return the drive ``name``, held until `_release` (for a call, or an open file)."""
        with self._drives_lock:
            self._users[name] = self._users.get(name, 0) + 1
            return self._kept(name)

    def _release(self, name: str) -> None:
        with self._drives_lock:
            users = self._users.get(name, 0) - 1
            if users > 0:
                self._users[name] = users
            else:
                self._users.pop(name, None)

    def _close_unneeded_soon(self) -> None:
        """Have the filesystem's loop close the drives no longer needed (from any thread).

        For files, which give their drive back when closed, in whatever thread closes them
        (or collects them): many files of many drives, and no call between, would keep
        every drive.
        """
        self._close_unneeded_soon_if(others=True)

    def _close_unneeded_soon_if(self, *, others: bool) -> None:
        loop = self._loop
        if loop is None or loop.is_closed() or sys.is_finalizing():
            return
        if _kept_in_all() <= _KEPT_DRIVES:
            return
        with contextlib.suppress(RuntimeError):  # (the loop stopped meanwhile)
            asyncio.run_coroutine_threadsafe(self._close_unneeded(others=others), loop)

    async def _close_unneeded(self, *, others: bool = True) -> None:
        """Close this filesystem's drives not in use, and not among those used last.

        ``others``: have the other filesystems of the process close theirs too (on their
        own loops): a filesystem no longer used keeps its drives until then.
        """
        if _kept_in_all() <= _KEPT_DRIVES:
            return
        used_last = _used_last()
        with self._drives_lock:  # chosen and taken out at once: none is lent meanwhile
            kept = {*self._users, *self._pinned}
            closing = [
                self._drives.pop(name)
                for name in list(self._drives)
                if name not in kept and (id(self), name) not in used_last
            ]
            for drive in closing:
                del self._last_use[drive.name]
        if others:
            for filesystem in list(_filesystems.values()):
                idle = set(filesystem._drives) - {*filesystem._users, *filesystem._pinned}
                if filesystem is not self and any(
                    (id(filesystem), name) not in used_last for name in idle
                ):
                    filesystem._close_unneeded_soon_if(others=False)
        for drive in closing:
            with contextlib.suppress(Exception):  # (its failure is not the caller's call's)
                await drive.aclose()

    @contextlib.asynccontextmanager
    async def _drive_to_ask(self, name: str) -> AsyncIterator[Drive]:
        """Lend the drive to ask about a path of drive ``name`` (`_info`'s probes).

        The one kept for it, where this root has its folder (it has files) or it is used
        already; else, most likely a drive that does not exist, one made for the question
        and closed after it: probes of many names would keep a connection each.
        """
        if name in self._drives or await in_a_disk_thread(self._has_folder, name):
            async with self._using(name) as kept:
                yield kept
            return
        probe = Drive(f"lit://{name}", **self._drive_args)
        probe._read_first = self._read_component
        try:
            yield probe
        finally:
            await probe.aclose()

    def _has_folder(self, name: str) -> bool:
        return (self._root() / "drives" / name).is_dir()

    async def aclose(self) -> None:
        """Close the drives' connections (done by itself at garbage collection and exit)."""
        with self._drives_lock:
            drives = list(self._drives.values())
            self._drives.clear()
            self._pinned.clear()
            self._last_use.clear()
        await _aclose_all(drives)

    def close(self) -> None:
        """Close the drives' connections: the blocking form of `aclose`, for sync use."""
        if self._loop is not None:
            sync(self._loop, self.aclose)

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        """Strip ``lit://`` as fsspec does; a path of another type raises `PathTypeError`."""
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        _check_path_type(path)
        return super()._strip_protocol(path)

    async def _expand_path(
        self, path: Any, recursive: bool = False, maxdepth: int | None = None, **kwargs: Any
    ) -> Any:
        """Expand as fsspec does; paths of another type, or a bad maxdepth, raise first."""
        if isinstance(path, str | os.PathLike):
            path = _path_str(path)
        else:
            path = [_path_str(each) for each in _paths_in(path)]
        _check_maxdepth(maxdepth)
        return await super()._expand_path(path, recursive, maxdepth, **kwargs)

    async def _glob(self, path: Any, maxdepth: int | None = None, **kwargs: Any) -> Any:
        """Glob as fsspec does; a path of another type, or a bad maxdepth, raise first."""
        _check_maxdepth(maxdepth)
        return await super()._glob(_path_str(path), maxdepth=maxdepth, **kwargs)

    def _split(self, path: str) -> tuple[str, str]:
        """Split a URL or path into (drive name, path in the drive); ``""`` for the root."""
        # 'lit:///d/a' and '/d/a' name drive d too (fsspec's local paths begin with '/').
        stripped: str = self._strip_protocol(path).lstrip("/")
        name, _, rest = stripped.partition("/")
        if name and not is_valid_name(name):
            raise InvalidPathError(
                f"{path!r} does not start with a drive name: lit:// URLs are "
                "'lit://<drive>/<path>', the name 1-128 letters, digits, '.', '_' or '-'."
            )
        # ('lit://d//a', as f"lit://d/{prefix}/a" with no prefix: 'a', as 'lit://d/x//a' is 'x/a')
        return name, rest.lstrip("/")

    def _file(self, path: str) -> tuple[str, str]:
        """`_split` a path that names a file: a drive (or the root) is a folder."""
        name, rest = self._split(path)
        if not rest:
            example = f"lit://{name}/<path>" if name else "lit://<drive>/<path>"
            raise DriveIsADirectoryError(
                f"{path!r} is {f'drive {name!r}' if name else 'the root of the drives'}, a "
                f"folder: name a file in it ({example})."
            )
        return name, rest

    def _where(self, path: str) -> str:
        """Return ``path`` as ``<drive>/<path in the drive>``, normalised ('d//a/.' is 'd/a')."""
        name, rest = self._split(path)
        rest = _paths.normalize(rest or ".", drive=name, allow_root=True)
        return f"{name}/{rest}" if rest else name

    def _whole_drive(self, path: object, recursive: bool) -> str | None:
        """Return the drive's name if ``path`` is a whole drive copied as a folder."""
        if not (isinstance(path, str) and recursive) or path.endswith("/") or _GLOB.search(path):
            return None  # (a '/' at its end: its contents, as for any folder)
        name, rest = self._split(path)
        return name if name and not rest else None

    def _root(self) -> Path:
        return resolve_root(self._drive_args["root"])

    def _drive_names(self) -> list[str]:
        folder = self._root() / "drives"
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except FileNotFoundError:
            return []
        return [
            e.name for e in entries if e.is_dir(follow_symlinks=False) and is_valid_name(e.name)
        ]

    # -- reading the index -------------------------------------------------------------------

    async def _exists(self, path: str, **kwargs: Any) -> bool:
        """Tell whether a file or folder is at ``path``; False for a path no drive may have.

        As fsspec's filesystems and `os.path.exists` answer (a name reserved for
        asyncdrive's own files, a control character, ``..`` out of the drive): nothing can
        be there. A drive that cannot be reached still raises.
        """
        _check_path_type(path)  # (not a path: a TypeError, as os.path.exists(None) raises)
        try:
            await self._info(path, **kwargs)
        except (FileNotFoundError, InvalidPathError):
            return False
        return True

    @_fsspec_terms()
    async def _info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        name, rest = self._split(path)
        if not name:
            return _dir_entry("")
        if not rest:
            names = await in_a_disk_thread(self._drive_names)
            if name in names:
                return _dir_entry(name)
            async with self._drive_to_ask(name) as drive:
                if await drive.list("."):
                    return _dir_entry(name)
            raise DriveFileNotFoundError(
                f"Drive {name!r}: no such drive under {str(self._root())!r}; check the name, "
                "or the root (storage_options root=, or $ASYNCDRIVE_ROOT)."
            )
        async with self._drive_to_ask(name) as drive:
            try:
                info = await drive.info(rest)
            except DriveIsADirectoryError:  # (named as the drive takes it, as its files)
                return _dir_entry(f"{name}/{_paths.normalize(rest, drive=name)}")
            except AmbiguousPathError as several:  # a file all the same: the copy ls shows
                info = await drive.info(rest, component_name=several.owners[0])
        return _file_entry(f"{name}/{info.path}", info)

    @_fsspec_terms()
    async def _ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        name, rest = self._split(path)
        if not name:
            names = await in_a_disk_thread(self._drive_names)
            return [_dir_entry(n) for n in names] if detail else names
        try:
            async with self._using(name) as drive:
                infos = await drive.list_info(rest or ".") if detail else []
                names = [] if detail else await drive.list(rest or ".")
        except DriveNotADirectoryError:
            infos, names = [], []  # a file: it lists as itself, like in fsspec's others
        if not infos and not names:
            # A missing path fails (FileNotFoundError from _info); an existing, empty drive
            # lists as nothing.
            this = await self._info(path)
            found = [this] if this["type"] == "file" else []
            return found if detail else [e["name"] for e in found]
        if not detail:
            return [f"{name}/{entry}" for entry in names]
        return list(self._entries(name, infos).values())

    def _entries(
        self, name: str, infos: Sequence[FileInfo | FolderInfo]
    ) -> dict[str, dict[str, Any]]:
        """Return fsspec's entries of `Drive.list_info`'s, by name, in its order.

        One entry a path: of a file owned by several components, the reading one's copy
        (or else the first), as `_info` reads.
        """
        entries: dict[str, dict[str, Any]] = {}
        for info in infos:
            full = f"{name}/{info.path}"
            if isinstance(info, FolderInfo):
                entries[full] = _dir_entry(full)
            elif full not in entries or info.component_name == self._read_component:
                entries[full] = _file_entry(full, info)
        return entries

    async def _walk(
        self,
        path: str,
        maxdepth: int | None = None,
        topdown: bool = True,
        on_error: str | Callable[[BaseException], object] = "omit",
        **kwargs: Any,
    ) -> AsyncIterator[tuple[str, Any, Any]]:
        """Walk as fsspec's walk does, from one read of the index (two), not one a folder.

        Yields (folder, its folders, its files) from ``path`` down (``topdown``) or up,
        ``maxdepth`` levels; with ``topdown``, removing folders from the yielded ones skips
        them. A listing that fails is taken as ``on_error`` says, as fsspec does. A file, a
        missing folder and the drives themselves take fsspec's own way.
        """
        name, rest = self._split(path)
        detail = kwargs.get("detail", False)
        tree: dict[str, tuple[dict[str, Any], dict[str, Any]]] | None = None
        if name and (maxdepth is None or maxdepth >= 1):
            try:
                tree = await self._tree(name, rest, detail=detail)
            except DriveNotADirectoryError:
                tree = None
            except OSError as exc:  # as fsspec's walk takes a failed listing (not twice)
                if on_error == "raise":
                    raise
                if callable(on_error):
                    on_error(exc)
                shown = self._strip_protocol(path)
                yield (shown, {}, {}) if detail else (shown, [], [])
                return
        if not tree:
            async for found in super()._walk(
                path, maxdepth=maxdepth, topdown=topdown, on_error=on_error, **kwargs
            ):
                yield found
            return

        async def walk(
            folder: str, shown: str, depth: int | None
        ) -> AsyncIterator[tuple[str, Any, Any]]:
            below, files = tree[folder]
            dirs: Any = dict(below) if detail else list(below)
            listed: Any = dict(files) if detail else list(files)
            if topdown:
                yield shown, dirs, listed
            if depth is None or depth > 1:
                for d in dirs:  # as the caller left them
                    inner = f"{folder}/{d}"
                    async for found in walk(inner, inner, None if depth is None else depth - 1):
                        yield found
            if not topdown:
                yield shown, dirs, listed

        # The folder as given (as fsspec names it), and below it as the index names them.
        async for found in walk(next(iter(tree)), self._strip_protocol(path), maxdepth):
            yield found

    async def _files_below(
        self, name: str, folder: str, *, detail: bool
    ) -> dict[str, dict[str, Any]]:
        """Return every file below drive path ``folder`` (``""``: all), by full name, sorted.

        One recursive listing; with ``detail``, one round trip more for fsspec's entries
        (else they are empty). Raises `DriveNotADirectoryError` if ``folder`` is a file.
        """
        async with self._using(name) as drive:
            if detail:
                return self._entries(name, await drive.list_info(folder or ".", recursive=True))
            files = await drive.list(folder or ".", recursive=True)
        return {f"{name}/{file}": {} for file in files}

    async def _tree(
        self, name: str, rest: str, *, detail: bool
    ) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
        """Return each folder below ``rest`` (itself included): its folders and its files.

        Keyed by full name (``<drive>/<path>``), ``rest``'s first, each value fsspec's
        entries by base name, sorted (without ``detail``, the files' entries are empty);
        empty if nothing is below ``rest``.
        """
        folder = _paths.normalize(rest or ".", drive=name, allow_root=True)
        files = await self._files_below(name, folder, detail=detail)
        top = f"{name}/{folder}" if folder else name
        tree: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {top: ({}, {})} if files else {}
        for full, entry in files.items():
            parent, _, base = full.rpartition("/")
            tree.setdefault(parent, ({}, {}))[1][base] = entry
            while parent != top:  # each folder between, in its own parent's folders
                above, _, base = parent.rpartition("/")
                dirs = tree.setdefault(above, ({}, {}))[0]
                if base in dirs:
                    break
                dirs[base] = _dir_entry(parent)
                parent = above
        return {
            key: (dict(sorted(dirs.items())), dict(sorted(files.items())))
            for key, (dirs, files) in tree.items()
        }

    async def _find(
        self,
        path: str,
        maxdepth: int | None = None,
        withdirs: bool = False,
        detail: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Find what fsspec's walk would, from one read of the index (two with details).

        Every file below ``path`` comes from one recursive listing; the folders between
        (``withdirs``) from the files' paths; ``maxdepth`` keeps what is at most that many
        levels below. The drives themselves and a file path take fsspec's own way.
        """
        _check_maxdepth(maxdepth)
        name, rest = self._split(path)
        if not name:
            return await super()._find(
                path, maxdepth=maxdepth, withdirs=withdirs, detail=detail, **kwargs
            )
        folder = _paths.normalize(rest or ".", drive=name, allow_root=True)
        try:
            files = await self._files_below(name, folder, detail=detail)
        except DriveNotADirectoryError:  # a file finds itself
            return await super()._find(
                path, maxdepth=maxdepth, withdirs=withdirs, detail=detail, **kwargs
            )
        top = len(folder.split("/")) if folder else 0  # the levels of ``folder`` itself
        found: dict[str, dict[str, Any]] = {}
        if withdirs and (files or await self._isdir(path)):
            found[self._strip_protocol(path)] = await self._info(path)
        for full, entry in files.items():
            parts = full.split("/")[1:]  # the file's drive path, split
            if maxdepth is None or len(parts) - top <= maxdepth:
                found[full] = entry
            if withdirs:  # the folders between, down to maxdepth levels below ``folder``
                deepest = len(parts) - 1
                if maxdepth is not None:
                    deepest = min(deepest, top + maxdepth)
                for level in range(top + 1, deepest + 1):
                    between = f"{name}/{'/'.join(parts[:level])}"
                    found.setdefault(between, _dir_entry(between))
        names = sorted(found)
        return {n: found[n] for n in names} if detail else names

    async def _du(
        self, path: str, total: bool = True, maxdepth: int | None = None, **kwargs: Any
    ) -> Any:
        """Return the size of what is below ``path``, from one recursive listing (see `_find`).

        In all (``total``), or by name. A file owned by several components counts once, as
        `ls` shows it.
        """
        kwargs["detail"] = True
        found: dict[str, dict[str, Any]] = await self._find(path, maxdepth=maxdepth, **kwargs)
        sizes = {name: entry["size"] for name, entry in found.items()}
        return sum(sizes.values()) if total else sizes

    @_fsspec_terms()
    async def _cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        name, rest = self._file(path)
        async with self._using(name) as drive, drive.open(rest) as f:
            return await f.read_range(start or 0, end)

    # -- writing -----------------------------------------------------------------------------

    @_fsspec_terms()
    async def _pipe_file(
        self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any
    ) -> None:
        name, rest = self._file(path)
        async with self._using(name) as drive:
            await drive.write_bytes(rest, value, exist_ok=mode != "create")

    @_fsspec_terms(drive_arg=1)
    async def _put_file(
        self,
        lpath: str,
        rpath: str,
        callback: Callback = DEFAULT_CALLBACK,
        mode: str = "overwrite",
        **kwargs: Any,
    ) -> None:
        if await in_a_disk_thread(os.path.isdir, lpath):
            return  # folders exist by what they hold
        name, rest = self._file(rpath)
        async with self._using(name) as drive:
            await drive.put(
                lpath, to=rest, exist_ok=mode != "create", progress=_reporting_to(callback)
            )

    async def _pipe(self, path: Any, value: Any = None, **kwargs: Any) -> Any:
        """Write as fsspec does: ``path`` and ``value``, or a dict of paths to values."""
        if not isinstance(path, dict):
            path = _path_str(path)
        return await super()._pipe(path, value, **kwargs)

    async def _get(self, rpath: Any, lpath: Any, recursive: bool = False, **kwargs: Any) -> Any:
        """Get as fsspec does; a whole drive got into a folder goes in as a folder of its name.

        A local file where a folder of ``lpath`` should be raises `DriveNotADirectoryError`
        (fsspec's own making of the folders raised a bare `FileExistsError`).
        """
        name = self._whole_drive(rpath, recursive)
        into = isinstance(lpath, str) and lpath.endswith(("/", os.sep))
        if (
            name
            and isinstance(lpath, str)
            and (into or await in_a_disk_thread(os.path.isdir, lpath))
        ):
            lpath = os.path.join(lpath, name)  # (fsspec took its name for no level)
        try:
            return await super()._get(rpath, lpath, recursive=recursive, **kwargs)
        except (FileExistsError, NotADirectoryError) as exc:
            if isinstance(exc, DriveError):
                raise
            in_the_way = exc.filename and await in_a_disk_thread(_file_at_or_above, exc.filename)
            if not in_the_way:
                raise
            raise DriveNotADirectoryError(
                f"cannot get {rpath!r} to {lpath!r}: a folder above it is a local file "
                f"({in_the_way!r}). Pass another local path, or move that file away."
            ) from exc

    async def _copy(self, path1: Any, path2: Any, recursive: bool = False, **kwargs: Any) -> Any:
        """Copy as fsspec does; a whole drive copied into a folder goes in as a folder named so."""
        if isinstance(path2, str) and not self._split(path2)[0]:
            raise InvalidPathError(
                f"Cannot copy into {path2!r}, the root of the drives: name a drive "
                "(lit://<drive>/<path>) to copy into."
            )
        name = self._whole_drive(path1, recursive)
        into = isinstance(path2, str) and path2.endswith("/")
        if name and isinstance(path2, str) and (into or await self._isdir(path2)):
            path2 = f"{path2.rstrip('/')}/{name}"
        return await super()._copy(path1, path2, recursive=recursive, **kwargs)

    @_fsspec_terms()
    async def _get_file(
        self, rpath: str, lpath: str, callback: Callback = DEFAULT_CALLBACK, **kwargs: Any
    ) -> None:
        name, rest = self._split(rpath)
        if name and not rest:  # a whole drive (get(recursive=True) has it): a folder
            await in_a_disk_thread(_make_folders, lpath)
            return
        name, rest = self._file(rpath)
        if await in_a_disk_thread(os.path.isdir, lpath):
            if (await self._info(rpath))["type"] == "directory":
                return  # a folder (get(recursive=True) has them): made for the files in it
            raise DriveIsADirectoryError(
                f"Drive {name!r}: cannot get {rest!r}: the local path {lpath!r} is a folder. "
                f"Name a file in it ({os.path.join(lpath, os.path.basename(rest))!r}, say), "
                "or copy into it with fs.get(rpath, lpath + '/')."
            )
        # The local file appears complete, or not at all (as any get's copy).
        async with self._using(name) as drive:
            try:
                await drive._get_file(
                    rest, to=lpath, overwrite=True, progress=_reporting_to(callback)
                )
            except FolderNotFileError:
                # Made, as LocalFileSystem.get_file makes a folder: its files are
                # get(recursive=True)'s (it copied the whole tree, then each file again).
                await in_a_disk_thread(_make_folders, lpath)

    @_fsspec_terms()
    async def _rm_file(self, path: str, **kwargs: Any) -> None:
        name, rest = self._file(path)
        async with self._using(name) as drive:
            await drive.delete(rest)

    @_fsspec_terms()
    async def _rm(
        self,
        path: str | list[str],
        recursive: bool = False,
        maxdepth: int | None = None,
        **kwargs: Any,
    ) -> None:
        paths = [path] if isinstance(path, str | os.PathLike) else _paths_in(path)
        for one in paths:
            _check_path_type(one)
        _check_maxdepth(maxdepth)
        for one in map(os.fspath, paths):  # type: ignore[arg-type]  # (paths: checked)
            name, rest = self._split(one)
            if not name:
                raise InvalidPathError(
                    f"fs.rm({one!r}) names the root of the drives, not a drive: name a drive "
                    "(fs.rm('lit://<drive>', recursive=True)) to delete the files of this "
                    "filesystem's component in it."
                )
            if not rest and not recursive:
                raise DriveIsADirectoryError(
                    f"Drive {name!r}: {one!r} is a whole drive; pass recursive=True to delete "
                    "the files of this filesystem's component in it."
                )
            if maxdepth is None and not _GLOB.search(rest):
                async with self._using(name) as drive:  # (the whole drive: as delete('.'))
                    await drive.delete(rest or ".", recursive=recursive)
                continue
            await self._rm_matches(one, recursive=recursive, maxdepth=maxdepth)

    async def _rm_matches(self, pattern: str, *, recursive: bool, maxdepth: int | None) -> None:
        """`_rm` of a glob, or with ``maxdepth``: what fsspec's rm removes, as its way finds it.

        The paths the pattern matches, and with ``recursive`` what is below them, down to
        ``maxdepth`` levels. Without ``recursive``, a folder among them refuses them all
        before any is deleted; with it, one matched whole goes in one delete.
        """
        name, rest = self._split(pattern)
        matched = await self._glob(pattern, maxdepth=maxdepth, detail=True)
        if not matched:  # as fsspec's rm: a pattern that matches nothing is an error
            raise DriveFileNotFoundError(
                f"Drive {name!r}: nothing matches {rest!r}; check it with fs.glob({pattern!r})."
            )
        folders = sorted(n for n, e in matched.items() if e["type"] == "directory")
        if folders and not recursive:
            raise DriveIsADirectoryError(
                f"Drive {name!r}: {rest!r} matches the folder {folders[0]!r}; pass "
                "recursive=True to delete the files in it."
            )
        if maxdepth is None:  # each folder matched, whole; files below them go with them
            for folder in folders:
                if not any(folder.startswith(f"{done}/") for done in folders if done != folder):
                    await self._delete_folder(folder)
            below = tuple(f"{folder}/" for folder in folders)
            files = [n for n, e in matched.items() if e["type"] == "file"]
            for file in files:
                if not file.startswith(below):
                    await self._delete_file(file)
            return
        for found in await self._expand_path(pattern, recursive=recursive, maxdepth=maxdepth):
            with contextlib.suppress(DriveIsADirectoryError):  # (folders go with their files)
                await self._delete_file(found)

    async def _delete_file(self, path: str) -> None:
        name, rest = self._split(path)
        if rest:  # (not the drive itself, which 'lit://d/**' names: its files come too)
            async with self._using(name) as drive:
                await drive.delete(rest)

    async def _delete_folder(self, path: str) -> None:
        name, rest = self._split(path)  # ('lit://d/**' names the drive itself: all of it)
        async with self._using(name) as drive:
            await drive.delete(rest or ".", recursive=True)  # (this component's own)

    def mv(
        self,
        path1: str | list[str],
        path2: str,
        recursive: bool = False,
        maxdepth: int | None = None,
        **kwargs: Any,
    ) -> None:
        """Move files as fsspec does, copying them then deleting what was copied.

        Unlike fsspec's own: with ``maxdepth``, the files deeper down stay (fsspec's removes
        all below the sources); a move onto itself, however written (``d/a``, ``d//a``),
        does nothing; a folder moved into itself is refused; a whole drive moves as a
        folder. Refused before anything is copied where a source is another component's: a
        component deletes only its own copies, so the move would leave both.

        Example:
            >>> fs.mv("lit://d/tmp/model.pt", "lit://d/models/model.pt")

        """
        if isinstance(path1, str) and not _GLOB.search(path1):
            source, target = self._where(path1), self._where(path2)
            if source == target and not path2.endswith("/"):  # ('d/a' and 'd//a', say)
                super().mv(path1, path1)  # (nothing moved, as fsspec says in its log)
                return
            if target == source or target.startswith(f"{source}/"):
                raise InvalidPathError(
                    f"fs.mv({path1!r}, {path2!r}) would move {source!r} into itself, then "
                    "delete it: nothing was moved. Move it elsewhere."
                )
        sync(self.loop, self._check_movable, path1, recursive, maxdepth)
        self.copy(path1, path2, recursive=recursive, maxdepth=maxdepth, on_error="raise")
        # What was copied: fsspec's own mv removes all below the sources, whatever maxdepth
        # copied (so it deleted the files deeper down, never copied).
        self.rm(path1, recursive=recursive, maxdepth=maxdepth)

    async def _mv_file(self, path1: str, path2: str) -> None:
        """Move one file (async mode): refused first if it is another component's."""
        if self._where(path1) == self._where(path2):
            return  # (the same file, named twice: nothing to move, nothing to delete)
        await self._check_movable(path1, False, None)
        await super()._mv_file(path1, path2)

    @_fsspec_terms()
    async def _check_movable(
        self, path: str | list[str], recursive: bool, maxdepth: int | None
    ) -> None:
        for found in await self._expand_path(path, recursive=recursive, maxdepth=maxdepth):
            name, rest = self._split(found)
            if rest:
                try:
                    async with self._using(name) as drive:
                        await drive._check_deletable(rest)
                except DriveFileNotFoundError as exc:
                    raise DriveFileNotFoundError(f"{exc} Nothing was moved.") from None

    @_fsspec_terms()
    async def _mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        """Check that a folder may be made at ``path``; nothing is written.

        A drive's folders, and drives, exist by the files they hold (as an object store's
        prefixes): one appears with its first file. As with fsspec's local filesystem, a
        folder or file already there raises `FileExistsError`, a file standing where a
        parent folder would `NotADirectoryError`.
        """
        await self._makedirs(path, exist_ok=False)

    @_fsspec_terms()
    async def _makedirs(self, path: str, exist_ok: bool = False) -> None:
        """Check that ``path`` is, or may become, a folder (see `_mkdir`); nothing is written.

        Raises `FileExistsError` if a file is there, or a folder and not ``exist_ok``.
        """
        name, rest = self._split(path)
        try:
            kind = (await self._info(path))["type"]
        except FileNotFoundError:
            if rest:
                await self._check_no_file_above(name, rest)
            return
        if kind == "file":
            raise DriveFileExistsError(
                f"Drive {name!r}: {rest!r} is a file, so no folder can be made there; "
                "delete it first (fs.rm), or choose another path."
            )
        if not exist_ok:
            where = f"Drive {name!r}: folder {rest!r}" if rest else f"Drive {name!r}"
            raise DriveFileExistsError(
                f"{where if name else 'The root of the drives'} already exists; use "
                "fs.makedirs(path, exist_ok=True) to accept an existing folder."
            )

    async def _check_no_file_above(self, name: str, rest: str) -> None:
        """Raise `DriveNotADirectoryError` if a file stands for a folder above ``rest``."""
        parents = _paths.parent_dirs(rest.rstrip("/"))[1:]
        async with self._drive_to_ask(name) as drive:
            exist = await asyncio.gather(*(drive.exists(p) for p in parents))
            are_folders = await asyncio.gather(*(drive.exists(f"{p}/") for p in parents))
        for parent, exists, is_folder in zip(parents, exist, are_folders, strict=True):
            if exists and not is_folder:
                raise DriveNotADirectoryError(
                    f"Drive {name!r}: {parent!r} is a file, so {rest!r} cannot be a folder "
                    "below it; choose another path, or delete the file first (fs.rm)."
                )

    @_fsspec_terms()
    async def _cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        name1, rest1 = self._split(path1)
        if name1 and not rest1:
            return  # a whole drive (copy(recursive=True) lists it): made by the files in it
        name1, rest1 = self._file(path1)  # (the root of the drives: refused)
        async with self._using(name1) as source:
            try:
                src = await source.open(rest1)
            except DriveIsADirectoryError:
                return  # a folder (copy(recursive=True) lists them): made by the files in it
            async with src:
                name2, rest2 = self._file(path2)  # (a file's copy is a file, not a drive)
                async with self._using(name2) as target, target.open(rest2, "wb") as dst:
                    while piece := await src.read(_PIECE):
                        await dst.write(piece)

    def modified(self, path: str) -> datetime.datetime:
        """Return when the file's current version was committed (UTC), as fsspec's others."""
        info = self.info(path)
        if info["type"] != "file":
            raise DriveIsADirectoryError(
                f"{path!r} is a folder: folders of a drive have no time of their own; ask "
                "modified() of the files in it."
            )
        return datetime.datetime.fromtimestamp(info["mtime"], tz=datetime.UTC)

    def invalidate_cache(self, path: str | None = None) -> None:
        """Do nothing: listings are never cached, so there is nothing to invalidate."""

    # -- file objects --------------------------------------------------------------------------

    def open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | str | None = None,
        cache_options: dict[str, Any] | None = None,
        compression: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Open a drive file, as fsspec's ``open`` does (text modes, ``compression=``).

        Whatever the layers, closing the file closes (commits) the drive file under them,
        and leaving a ``with`` block by an exception drops what was written: fsspec's own
        text and compression layers close nothing under them, and an unclosed drive file is
        dropped.

        Example:
            >>> with fs.open("lit://d/log.txt.gz", "w", compression="infer") as f:
            ...     f.write("hello")  # committed, compressed, when the block ends
            5

        """
        if not isinstance(mode, str):
            raise ConfigTypeError(
                f"cannot open {path!r} with mode={shorten(repr(mode), 100)}: a mode is a str, "
                "as 'rb' or 'r' (read), 'wb' or 'w' (write, committed on close)."
            )
        if "b" not in mode:
            text = {k: kwargs.pop(k) for k in ("encoding", "errors", "newline") if k in kwargs}
            binary = self.open(
                path, mode.replace("t", "") + "b", block_size, cache_options, compression,
                **kwargs,
            )  # fmt: skip
            return _TextFile(binary, **text)
        file = super().open(path, mode, block_size, cache_options, **kwargs)
        codec = None if compression is None else get_compression(path, compression)
        if codec is None:
            return file
        return _Compressed(compr[codec](file, mode=mode[0]), file)

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | str | None = "default",
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> DriveFile:
        return DriveFile(self, path, mode, block_size, autocommit, cache_options, **kwargs)


def _weak_fetcher(file: DriveFile) -> Callable[[int, int], bytes]:
    """Return ``file._fetch_range``, for its cache, without holding ``file``.

    fsspec's cache holds the file's bound method, and the file its cache: a file dropped
    unclosed (pyarrow's parquet reader drops those it opens) lived on, its descriptor open,
    until the cycle collector ran. Without the cycle, it goes (closed) when dropped.
    """
    fetch = weakref.WeakMethod(file._fetch_range)
    name, path = file._drive_name, file._drive_path

    def fetch_range(start: int, end: int) -> bytes:
        method = fetch()
        if method is None:  # (only its cache left: nothing reads through it any more)
            raise _closed_error(name, path, "rb")
        return method(start, end)

    return fetch_range


class DriveFile(AbstractBufferedFile):  # type: ignore[misc]  # fsspec is untyped
    """A file object of `DriveFileSystem`: what ``fsspec.open("lit://d/a")`` gives.

    Reading keeps the version it opened; writing commits on close, or on ``commit()`` in a
    transaction, and leaving a ``with`` block by an exception drops what was written.
    """

    def __init__(
        self,
        fs: DriveFileSystem,
        path: str,
        mode: str,
        block_size: int | str | None,
        autocommit: bool,
        cache_options: dict[str, Any] | None,
        **kwargs: Any,
    ) -> None:
        name, rest = fs._file(path)
        kwargs.pop("size", None)  # (a pickled file's, reopened: the version opened now has its own)
        self._reader: DriveReader | None = None
        self._writer: DriveWriter | None = None
        #: Whether the write was dropped (an exception in its block, or never closed).
        self._dropped = False
        size = None
        if mode not in ("rb", "wb", "xb"):
            raise InvalidConfigError(
                f"Drive {name!r}: cannot open {rest!r} with mode {mode!r}: drive files "
                "open as 'rb', or as 'wb' or 'xb' (committed on close), never appended to."
            )
        self._drive_name, self._drive_path = name, rest
        #: The drive, held from the filesystem's closing of unused drives until closed.
        self._lender = fs
        self._drive: Drive | None = fs._lend(name)
        try:
            if mode == "rb":
                try:
                    self._reader = sync(fs.loop, self._drive.open(rest).open)
                except DriveError as exc:
                    _give_fsspec_terms(exc, name)
                    raise
                size = self._reader.size
            super().__init__(
                fs, path, mode=mode, block_size=block_size, autocommit=autocommit,
                cache_options=cache_options, size=size, **kwargs,
            )  # fmt: skip
            if mode == "rb":
                self.cache.fetcher = _weak_fetcher(self)
            if mode == "xb":
                self._initiate_upload()  # "x": refuse an existing file now, as open() does
        except BaseException:
            self._let_go_of_drive()
            raise

    def _let_go_of_drive(self) -> None:
        """Hand the drive back to the filesystem (once), whatever thread this runs in."""
        if getattr(self, "_drive", None) is not None:
            self._drive = None
            self._lender._release(self._drive_name)
            self._lender._close_unneeded_soon()

    def seekable(self) -> bool:
        """Whether the position may be asked: in a read; in a write, until its first byte.

        A text layer over a new file (``fs.open``'s, ``fsspec.open``'s, pandas') writes its
        encoding's start (UTF-16's byte order mark) only where it finds the stream at 0.
        A write's `seek` then raises, as ever: it only appends.
        """
        return bool(self.readable() or (not self.closed and self.loc == 0))

    def _fetch_range(self, start: int, end: int) -> bytes:
        assert self._reader is not None
        return sync(self.fs.loop, self._reader.read_range, start, end)  # type: ignore[no-any-return]

    def _initiate_upload(self) -> None:
        if self._writer is not None:  # opened already ("xb")
            return
        assert self._drive is not None
        opening = self._drive.open(self._drive_path, "wb", exist_ok=self.mode != "xb")
        try:
            self._writer = sync(self.fs.loop, opening.open)
        except DriveClosedError as exc:
            raise self._closed_under_the_write() from exc
        except DriveError as exc:
            _give_fsspec_terms(exc, self._drive_name)
            raise

    def _upload_chunk(self, final: bool = False) -> bool:
        assert self._writer is not None
        try:
            sync(self.fs.loop, self._writer.write, self.buffer.getvalue())
        except DriveClosedError as exc:
            raise self._closed_under_the_write() from exc
        if final and self.autocommit:
            self.commit()
        return True

    def _closed_under_the_write(self) -> DriveClosedError:
        """Say that the filesystem closed its drives (`fs.close()`) under this write."""
        return DriveClosedError(
            f"Drive {self._drive_name!r}: the filesystem was closed (fs.close()) before "
            f"'lit://{self._drive_name}/{self._drive_path}' was committed, so nothing was "
            "stored: close files before their filesystem, or write the file again."
        )

    def commit(self) -> None:
        """Commit what was written: readers see the new file from now on."""
        try:
            if self._writer is not None:
                sync(self.fs.loop, self._writer.aclose)
        except DriveClosedError as exc:
            raise self._closed_under_the_write() from exc
        except DriveError as exc:
            _give_fsspec_terms(exc, self._drive_name)
            raise
        finally:
            self._let_go_of_drive()

    def discard(self) -> None:
        """Drop what was written; the drive stays as it was."""
        try:
            if self._writer is not None:
                sync(self.fs.loop, self._writer.abort)
        finally:
            self._let_go_of_drive()

    def close(self) -> None:
        """Close the file: commit a write (unless in a transaction), release a read."""
        if getattr(self, "closed", True):
            return
        if sys.is_finalizing():
            # Closed by a finalizer at interpreter exit (fsspec's own text layer, left
            # open): fsspec's loop is gone, a commit would wait forever. Dropped instead,
            # as an unclosed drive file is.
            self.__del__()
            return
        try:
            super().close()
        finally:
            if self._reader is not None:
                self._reader._let_go()
            if self.mode == "rb" or self.autocommit:  # (in a transaction: at its end)
                self._let_go_of_drive()

    def write(self, data: Any) -> int:
        """Write ``data`` (bytes-like); return how many bytes. Into a dropped write: nowhere.

        A codec's file over this one (``compression=``) or fsspec's text layer, closed or
        collected after the write was dropped, writes its last bytes here: they go nowhere
        (they raised, and Python 3.13 reports errors of finalizers).
        """
        if self._dropped:
            return memoryview(data).nbytes
        written: int = super().write(data)
        return written

    def __del__(self) -> None:
        # Never through the event loop: at interpreter exit it no longer runs. An unclosed
        # write is dropped, not committed: only close() commits.
        if not getattr(self, "closed", True):
            self.closed = True
            self._dropped = True
            if self._writer is not None:
                self._writer._let_go()
            if self._reader is not None:
                self._reader._let_go()
            self._let_go_of_drive()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and self.mode != "rb" and not getattr(self, "closed", True):
            self.closed = self._dropped = True
            try:
                self.discard()  # never commit half of what the block meant to write
            finally:
                self._let_go_of_drive()
            return
        self.close()


class _TextFile(io.TextIOWrapper):
    """fsspec's text layer over a drive file, which drops a write its ``with`` block failed."""

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            under: Any = self.buffer  # a DriveFile, or a codec's file over one
            under.__exit__(exc_type, exc, tb)  # dropped: closed under this layer
        self.close()

    def __del__(self) -> None:
        # Unclosed: dropped, as an unclosed drive file is (io's finalizer would close, so
        # commit, half a file; and at interpreter exit, wait forever for fsspec's loop).
        try:
            if self.closed:
                return
            under: Any = self.buffer
        except (ValueError, AttributeError):  # its __init__ failed: nothing to drop
            return
        file = under._file if isinstance(under, _Compressed) else under
        file.__del__()


class _Compressed:
    """A compression codec's file over a `DriveFile` (``fs.open(..., compression=)``).

    fsspec's codecs leave the file under them open, where an unclosed drive file is dropped:
    closing this closes both, and a ``with`` block that fails drops the write.
    """

    def __init__(self, codec: Any, file: DriveFile) -> None:
        self._codec = codec
        self._file = file

    def __repr__(self) -> str:
        return f"<compressed {self._file!r}>"

    def __getattr__(self, name: str) -> Any:
        return getattr(self._codec, name)

    def __iter__(self) -> Any:
        return iter(self._codec)

    def __next__(self) -> Any:
        return next(self._codec)

    def __enter__(self) -> _Compressed:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        self._file.__exit__(exc_type, exc, tb)  # dropped first: nothing of it is committed
        with contextlib.suppress(Exception):
            self._codec.close()  # its last bytes go nowhere

    def close(self) -> None:
        """Close the codec (its last bytes written), then the drive file (committed)."""
        try:
            self._codec.close()
        finally:
            self._file.close()


io.IOBase.register(_Compressed)  # a file object, as the codec's file it wraps
