"""The ``asyncdrive`` command line (also ``python -m asyncdrive``).

Example:
    $ asyncdrive server status
    running: unix:///home/me/.local/share/asyncdrive/server/valkey.sock
    $ asyncdrive rebuild-index lit://drive_1
    lit://drive_1: 1042 files indexed
    $ asyncdrive gc --all --grace 600

"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import dataclasses
import io
import json
import os
import re
import select
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from . import __version__
from ._config import ENV_REDIS_URL, is_valid_name, redact_url, resolve_root
from ._drive import _local_files, _local_name
from ._exceptions import (
    DriveError,
    DriveFileNotFoundError,
    DriveNotADirectoryError,
    DriveUnavailableError,
    InvalidConfigError,
    rewrite_list_hints,
)
from ._models import FileInfo, FolderInfo
from ._paths import normalize
from ._server import ensure_server_sync, server_runs, server_url, stop_server
from ._storage import DRIVE_MARKER
from ._sync import SyncDrive

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

    from . import _bar as _bar_module


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose own output (``--help``, ``--version``) fails as ours does.

    argparse drops what writing it raises (a full disk: exit 0, nothing said).
    """

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        if message:
            out = file or sys.stderr
            try:
                out.write(message)
            except OSError:
                if out is sys.stdout:  # (stderr's, dropped as argparse does)
                    raise


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="asyncdrive",
        description="Share files between Python processes through a shared disk and Redis.",
    )
    parser.add_argument("--version", action="version", version=f"asyncdrive {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    where = _Parser(add_help=False)
    root_help = "the shared root (default: $ASYNCDRIVE_ROOT or per-user)"
    # Before the command or after it (SUPPRESS there: not given after, it leaves the value
    # given before, or the default).
    parser.add_argument("--root", default=None, help=root_help)
    where.add_argument("--root", default=argparse.SUPPRESS, help=root_help)
    # Also after the command (`asyncdrive cat lit://d/a --debug`); SUPPRESS: not given
    # there, it leaves the value given before the command.
    where.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks of errors"
    )
    server = commands.add_parser(
        "server",
        parents=[where],
        help="manage the embedded server of a root",
        description="Start, stop or inspect the embedded Redis-compatible server of a root.",
    )
    server.add_argument("action", choices=["start", "stop", "status"])

    json_output = _Parser(add_help=False)
    json_output.add_argument("--json", action="store_true", help="print JSON, for scripts")
    drives = _Parser(add_help=False, parents=[where])
    drives.add_argument("drive", nargs="?", help="the drive, lit://<name>")
    drives.add_argument("--all", action="store_true", help="every drive under the root")
    drives.add_argument(
        "--redis-url", default=None, help="the Redis server (default: $ASYNCDRIVE_REDIS_URL)"
    )
    rebuild = commands.add_parser(
        "rebuild-index",
        parents=[drives, json_output],
        help="rebuild a drive's index in Redis from the disk",
        description="Rebuild the index of a drive (or --all) from its files and metadata on "
        "disk, after the Redis server lost its data. Stop the writers first.",
    )
    rebuild.add_argument(
        "--verify", action="store_true", help="recompute every checksum from the bytes"
    )
    gc = commands.add_parser(
        "gc",
        parents=[drives, json_output],
        help="clean up after writers that died",
        description="Remove temporary uploads, undo half-done puts and drop orphaned bytes "
        "or index entries older than the grace period.",
    )
    gc.add_argument("--grace", type=float, default=3600.0, help="seconds (default 3600)")

    files = _Parser(add_help=False, parents=[where])
    files.add_argument(
        "--redis-url", default=None, help="the Redis server (default: $ASYNCDRIVE_REDIS_URL)"
    )
    files.add_argument(
        "--component",
        default=None,
        help="who writes, and whose copy to read where several own a path; ls: list only "
        "its files (default: $ASYNCDRIVE_COMPONENT; ls: every component's)",
    )
    ls = commands.add_parser("ls", parents=[files, json_output], help="list a folder of a drive")
    ls.add_argument("target", metavar="lit://DRIVE[/PATH]")
    ls.add_argument("-r", "--recursive", action="store_true", help="every file below")
    ls.add_argument(
        "-l", "--long", action="store_true", help="with size, version, owner and commit time"
    )
    put = commands.add_parser(
        "put",
        parents=[files, json_output],
        help="copy local files or folders into a drive",
        description="Copy LOCAL files or folders to a drive path. As with cp, a destination "
        "ending in '/' (or several LOCALs) is a folder they go into, and so is a folder of the "
        "drive for a file. LOCAL '-' stores stdin's bytes at the path, committed at their "
        "end (interrupted: nothing stored).",
    )
    put.add_argument(
        "--allow-duplicates",
        action="store_true",
        help="keep this component's own copy of a path another component owns",
    )
    put.add_argument("local", nargs="+", metavar="LOCAL")
    put.add_argument("target", metavar="lit://DRIVE/PATH")
    get = commands.add_parser(
        "get",
        parents=[files, json_output],
        help="copy a file or folder out of a drive",
        description="Copy a drive file or folder to LOCAL (default: its base name in the "
        "current directory). A LOCAL ending in '/' or naming a folder receives it inside.",
    )
    get.add_argument("target", metavar="lit://DRIVE/PATH")
    get.add_argument("local", nargs="?", metavar="LOCAL")
    get.add_argument("-f", "--overwrite", action="store_true", help="replace a local file")
    get.add_argument("--timeout", type=float, help="wait this many seconds for it to appear")
    cat = commands.add_parser("cat", parents=[files], help="write a file's bytes to stdout")
    cat.add_argument("target", metavar="lit://DRIVE/PATH")
    rm = commands.add_parser("rm", parents=[files], help="delete this component's copy")
    rm.add_argument("target", metavar="lit://DRIVE/PATH")
    rm.add_argument("-r", "--recursive", action="store_true", help="a whole folder")
    info = commands.add_parser(
        "info", parents=[files, json_output], help="show a file's size, version..."
    )
    info.add_argument("target", metavar="lit://DRIVE/PATH")
    watch = commands.add_parser(
        "watch", parents=[files, json_output], help="print changes as they happen"
    )
    watch.add_argument("target", metavar="lit://DRIVE[/PATH]")
    watch.add_argument("--since", help="resume after this event id ('0': all retained)")
    watch.add_argument("--group", help="share the events with the other members of GROUP")
    watch.add_argument(
        "--member", help="this member's name in GROUP: restarted, it takes back what it held"
    )
    watch.add_argument("--timeout", type=float, help="stop after this many idle seconds")
    groups = commands.add_parser(
        "groups",
        parents=[files, json_output],
        help="list a drive's consumer groups, or remove one",
        description="List the consumer groups of a drive (watch --group): what their members "
        "watch, how many there are, events held and not yet handed out. --remove removes a "
        "group no longer used (groups are kept when their last member leaves).",
    )
    groups.add_argument("target", metavar="lit://DRIVE")
    groups.add_argument(
        "--remove", metavar="GROUP", help="remove this group (refused while a member works)"
    )
    groups.add_argument(
        "--force", action="store_true", help="with --remove: even while a member works"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.epilog = (
        "exit status: 0 done, 1 error, 2 usage, 3 server not running (server status), "
        "4 not found, 5 already exists or changed meanwhile, 6 Redis unavailable, "
        "7 timed out, 130 interrupted (Ctrl-C), 141 output closed (| head)"
    )
    return parser


def _drive_ids(args: argparse.Namespace) -> list[str]:
    if args.all and args.drive:
        raise _UsageError("name one drive (lit://<name>) or pass --all, not both.")
    if not args.all and not args.drive:
        raise _UsageError("name a drive (lit://<name>), or pass --all for every drive.")
    if args.drive:
        drive = args.drive  # 'lit://d/' too, as ls takes it
        while drive.endswith("/") and len(drive) > len("lit://"):
            drive = drive[:-1]
        return [drive]
    base = resolve_root(args.root) / "drives"
    names = sorted(p.name for p in (base.iterdir() if base.is_dir() else []) if _is_drive_folder(p))
    if not names:
        print(f"asyncdrive: no drives under {base.parent}", file=sys.stderr)
    return [f"lit://{name}" for name in names]


def _is_drive_folder(path: Path) -> bool:
    """Whether ``path`` is a drive's folder: a valid name, marked at the drive's first commit."""
    return is_valid_name(path.name) and (path / DRIVE_MARKER).is_file()


def _for_each_drive(args: argparse.Namespace) -> int:
    """Run gc or rebuild-index; with --all, a drive that fails is reported, the next done.

    Returns the exit status: that of the first drive that failed, else 0.
    """
    drive_ids = _drive_ids(args)
    status = 0
    for drive_id in drive_ids:
        try:
            with SyncDrive(drive_id, root=args.root, redis_url=args.redis_url) as d:
                if args.command == "rebuild-index":
                    indexed = d.rebuild_index(verify=args.verify)
                    text = f"{drive_id}: {indexed} file{'' if indexed == 1 else 's'} indexed"
                    _print(args, {"drive": drive_id, "indexed": indexed}, text)
                else:
                    report = d.gc(grace=args.grace)
                    fields = {"drive": drive_id, **dataclasses.asdict(report)}
                    _print(args, fields, f"{drive_id}: {report}")
        except DriveError as exc:
            if not args.all or isinstance(exc, _EVERY_DRIVES):
                raise
            reported = _report(exc, args)
            status = status or reported
    return status


#: Errors that every drive of ``--all`` would meet (the server, the settings): reported once.
_EVERY_DRIVES = (DriveUnavailableError, InvalidConfigError)


def _report(exc: DriveError, args: argparse.Namespace) -> int:
    """Print ``exc`` as the command line's error; return its exit status."""
    if args.debug:  # the traceback, and the same exit status as without --debug
        traceback.print_exc()
    print(f"asyncdrive: error: {_as_commands(str(exc), args)}", file=sys.stderr)
    return next((code for kind, code in _EXIT_CODES if isinstance(exc, kind)), 1)


def _split(target: str) -> tuple[str, str]:
    """Split ``lit://drive/some/path`` into (``lit://drive``, ``some/path`` or ``.``)."""
    if not target.startswith("lit://"):
        raise _UsageError(f"{target!r} is not a drive path: write lit://<drive>/<path>.")
    name, _, path = target[len("lit://") :].partition("/")
    return f"lit://{name}", path.rstrip("/") or "."


def _join(folder: str, name: str) -> str:
    return name if folder == "." else f"{folder}/{name}"


def _join_id(drive_id: str, path: str) -> str:
    """Return the ``lit://`` target of ``path`` (``"."``: the drive) in drive ``drive_id``."""
    return drive_id if path in (".", "") else f"{drive_id}/{path}"


def _open(args: argparse.Namespace) -> tuple[SyncDrive, str]:
    """Return the drive of ``args.target`` and its path, normalised (``"."``: the drive)."""
    drive_id, path = _split(args.target)
    if args.component is not None and not is_valid_name(args.component):
        raise _UsageError(
            f"--component {args.component!r}: a component name is 1-128 letters, digits, "
            "'.', '_' or '-', not starting with '.'."
        )
    drive = SyncDrive(
        drive_id,
        root=args.root,
        redis_url=args.redis_url,
        component_name=args.component,
        allow_duplicates=getattr(args, "allow_duplicates", False),  # (put's)
    )
    try:  # as the library takes it: printed so, and named so ('a/..' is '.', named by it)
        path = normalize(path, drive=drive.name, allow_root=True) or "."
    except BaseException:
        drive.close()
        raise
    return drive, path


def _long_entry(info: FileInfo | FolderInfo) -> dict[str, object]:
    """Return an entry of ``ls -l --json``: a file's `FileInfo` fields, or a folder's path."""
    if isinstance(info, FolderInfo):
        return {"path": info.path, "type": "folder"}
    return {**dataclasses.asdict(info), "type": "file"}


def _long_listing(infos: list[FileInfo | FolderInfo]) -> str:
    """Return ``ls -l``'s text: size, version, owner, commit time (UTC), path; in columns."""
    rows = [
        ("-", "-", "-", "-", f"{info.path}/")
        if isinstance(info, FolderInfo)
        else (
            str(info.size),
            f"v{info.version}",
            info.component_name,
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(info.mtime)),
            info.path,
        )
        for info in infos
    ]
    widths = [max((len(row[i]) for row in rows), default=0) for i in range(4)]
    return "\n".join(
        f"{row[0]:>{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  "
        f"{row[3]:<{widths[3]}}  {row[4]}"
        for row in rows
    )


def _print(args: argparse.Namespace, value: object, text: str) -> None:
    """Print ``value`` as JSON with ``--json``, else ``text`` (nothing for no text)."""
    if getattr(args, "json", False):
        _say(json.dumps(value))
    elif text:
        _say(text)


def _say(text: str) -> None:
    """Print ``text`` on stdout; `_OutputFailed` if it cannot be written (a full disk)."""
    with _writing_output():
        print(text)


class _OutputFailed(Exception):
    """Stdout could not be written (not a reader gone: that is BrokenPipeError)."""


class _InputFailed(Exception):
    """Stdin could not be read (``put -``)."""


@contextlib.contextmanager
def _writing_output() -> Iterator[None]:
    """Turn what writing stdout raises into `_OutputFailed`, but a reader gone (SIGPIPE)."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise _OutputFailed(exc) from exc


def _bar(
    args: argparse.Namespace, describe: Callable[[], tuple[str, int | None]]
) -> _bar_module.TransferBar | None:
    """Make a progress bar on stderr if it is a terminal and the output is not --json.

    ``describe()`` gives its label and total (None: unknown), only if it is shown.
    """
    if getattr(args, "json", False) or not sys.stderr.isatty():
        return None
    from . import _bar as bar_module  # rich is only imported where a bar is shown

    return bar_module.TransferBar(*describe())


def _put_bar(sources: Sequence[Path]) -> tuple[str, int | None]:
    """Return the label and total of a put's bar: ``put <name>``, or ``put <n> files``."""
    try:
        found = [_local_files(local) or [] for local in sources]  # none: the put says why
    except OSError:  # a folder that cannot be read: the put says why
        return f"put {len(sources)} files" if len(sources) > 1 else f"put {sources[0].name}", None
    count = sum(len(files) for files in found)
    total = sum(size for files in found for _, size in files)
    if len(sources) == 1 and count == 1:
        return f"put {sources[0].name}", total
    return f"put {count} files", total


def _run_file_command(args: argparse.Namespace) -> int:
    locals_given = getattr(args, "local", None)
    for local in [locals_given] if isinstance(locals_given, str) else locals_given or []:
        if local.startswith("lit://"):
            raise _UsageError(
                f"{local!r} is a drive path, where {args.command} takes a local one: a "
                "copy from drive to drive is not supported (get, then put)."
            )
    drive, path = _open(args)
    # As the library takes it (and cp): 'lit://d/a.txt/' names a folder, refused for a file.
    given = f"{path}/" if args.target.endswith("/") and path != "." else path
    with drive:
        # ls: every component's files, or only those of --component, as the library lists.
        if args.command == "ls" and args.long:
            try:
                infos = drive.list_info(
                    given, recursive=args.recursive, component_name=args.component
                )
            except DriveNotADirectoryError:  # a file: listed alone (each copy), as ls does
                if given != path:  # ('lit://d/a.txt/': a folder asked for)
                    raise
                copies = drive._call(drive.drive._copies, path)  # (not all its folder's)
                infos = [c for c in copies if args.component in (None, c.component_name)]
            _check_something_at(drive, path, infos, args.component)
            _print(args, [_long_entry(info) for info in infos], _long_listing(infos))
        elif args.command == "ls":
            try:
                entries = drive.list(given, recursive=args.recursive, component_name=args.component)
            except DriveNotADirectoryError:
                if given != path:
                    raise
                entries = [path] if drive.exists(path, component_name=args.component) else []
            _check_something_at(drive, path, entries, args.component)
            _print(args, entries, "\n".join(entries))
        elif args.command == "cat":
            with drive.open(given, component_name=args.component) as f:  # streamed
                while chunk := f.read(_CAT_CHUNK):
                    _write_all(sys.stdout.buffer, chunk)
        elif args.command == "info":
            info = drive.info(given, component_name=args.component)
            fields = dataclasses.asdict(info)
            _print(args, fields, "\n".join(f"{k}: {v}" for k, v in fields.items()))
        elif args.command == "rm":
            # 'lit://d/sub/..' as written: the library refuses it, where '.' would delete all.
            drive.delete(_split(args.target)[1] if path == "." else given, recursive=args.recursive)
        elif args.command == "put" and "-" in args.local:
            _put_stdin(args, drive, given)
        elif args.command == "put":
            into_folder = args.target.endswith("/") or len(args.local) > 1 or path == "."
            if not into_folder and not Path(args.local[0]).is_dir():
                # As cp: a file put where a folder of the drive is goes into it (a folder
                # put there goes on into the same folder: re-put, it updates its files).
                with contextlib.suppress(DriveNotADirectoryError):
                    into_folder = bool(drive.list(path))
            bar = _bar(args, lambda: _put_bar([Path(local) for local in args.local]))
            status = 0
            with bar or contextlib.nullcontext():
                for local in args.local:
                    name = _local_name(local)  # of "." or "..": their own, as cp -r gives it
                    dest = _join(path, name) if into_folder else path
                    try:
                        drive.put(local, to=dest, progress=None if bar is None else bar.part())
                    except DriveError as exc:
                        # As cp: said, and on with the other sources (not when the drive
                        # cannot be reached: each would say so); the first failure's status.
                        if len(args.local) == 1 or isinstance(exc, DriveUnavailableError):
                            raise
                        code = _report(exc, args)
                        status = status or code
                        continue
                    _print(args, {"put": local, "to": dest}, f"{local} -> {drive.id}/{dest}")
            return status
        elif args.command == "get":
            # No LOCAL: into the current folder, as 'cp -r SRC .' (a folder got again
            # refreshes ./name, never makes ./name/name).
            local = Path(args.local or Path(path).name)
            if (args.local or "").endswith("/") or (args.local and local.is_dir()):
                local = local / Path(path).name
            bar = _bar(args, lambda: (f"get {Path(path).name or drive.name}", None))
            with bar or contextlib.nullcontext():
                drive.get(
                    given, to=local, overwrite=args.overwrite, timeout=args.timeout,
                    component_name=args.component,
                    progress=None if bar is None else bar.part(),
                )  # fmt: skip
            _print(args, {"got": str(local)}, f"{drive.id}/{path} -> {local}")
        elif args.command == "groups":
            return _groups_command(args, drive, path)
        else:  # watch
            with drive.watch(
                path, since=args.since, group=args.group, timeout=args.timeout,
                member=args.member,
            ) as w:  # fmt: skip
                for event in w:
                    fields = dataclasses.asdict(event)
                    _print(
                        args,
                        fields,
                        f"{event.id} {event.change} {event.path} v{event.version} "
                        f"{event.component_name}"
                        + (f" (delivery {event.deliveries})" if event.deliveries > 1 else ""),
                    )
                    sys.stdout.flush()
    return 0


def _check_something_at(
    drive: SyncDrive, path: str, listed: Sequence[object], component: str | None
) -> None:
    """Raise for an empty listing of a path where nothing is, as ls does (exit status 4).

    (The library lists a path where nothing is as ``[]``.) Where ``component`` is given,
    nothing of that component's.
    """
    if not listed and path != "." and not drive.exists(path, component_name=component):
        whose = "" if component is None else f" of component {component!r}"
        raise DriveFileNotFoundError(
            f"Drive {drive.name!r}: nothing{whose} at {path!r}; see what there is with "
            f"'asyncdrive ls {drive.id}'."
        )


def _groups_command(args: argparse.Namespace, drive: SyncDrive, path: str) -> int:
    """List the drive's consumer groups, or remove one (``--remove``)."""
    if path != ".":
        raise _UsageError(f"groups belong to a drive: name it alone ({drive.id}), not a path.")
    if args.force and args.remove is None:
        raise _UsageError("--force goes with --remove GROUP.")
    if args.remove is not None:
        removed = drive.remove_group(args.remove, force=args.force)
        done = f"{drive.id}: group {args.remove!r} removed" if removed else ""
        _print(args, {"removed": removed}, done)
        if not removed:
            print(f"asyncdrive: {drive.id} has no group {args.remove!r}", file=sys.stderr)
        return 0 if removed else 4
    found = drive.groups()
    rows = [("GROUP", "PATH", "MEMBERS", "PENDING", "LAG", "IDLE")] + [
        (
            group.name,
            group.path + ("/**" if group.recursive else "/*"),
            str(group.members),
            str(group.pending),
            "?" if group.lag is None else str(group.lag),
            "-" if group.idle is None else f"{group.idle:.1f}s",
        )
        for group in found
    ]
    widths = [*(max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)), 0]
    text = "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    )
    _print(args, [dataclasses.asdict(group) for group in found], text if found else "")
    return 0


#: How much of a file ``cat`` (or of stdin ``put -``) reads at a time: its memory, whatever
#: the file's size.
_CAT_CHUNK = 1 << 20


def _put_stdin(args: argparse.Namespace, drive: SyncDrive, path: str) -> None:
    """``put - lit://d/path``: store stdin's bytes, streamed, committed at its end (EOF).

    Interrupted (Ctrl-C, a signal) or failing before the end, nothing is stored.
    """
    if args.local != ["-"] or path == "." or path.endswith("/"):
        raise _UsageError(
            "'-' (stdin) is put alone, to a file's path: e.g. 'tar c data | asyncdrive put - "
            f"{drive.id}/data.tar'."
        )
    try:
        stdin = sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):  # (started with stdin closed: `<&-`)
        raise _UsageError("'-' reads stdin, which is closed: pipe the bytes in.") from None
    bar = _bar(args, lambda: (f"put stdin as {Path(path).name}", None))
    with bar or contextlib.nullcontext(), drive.open(path, "wb") as f:
        while chunk := _read_some(stdin):
            f.write(chunk)
            if bar is not None:
                bar.advance(len(chunk))
    _print(args, {"put": "-", "to": path}, f"- -> {drive.id}/{path}")


def _read_some(fd: int) -> bytes:
    """Read what is there of ``fd``, up to `_CAT_CHUNK` (b"": its end), waiting for some.

    On the descriptor itself: a stdin another process made non-blocking (a shared pipe)
    says "nothing yet" (EAGAIN), which Python's buffered reader takes for the end.
    """
    while True:
        try:
            return os.read(fd, _CAT_CHUNK)
        except BlockingIOError:
            select.select([fd], [], [])
        except OSError as exc:  # (a stdin opened for writing only: `0>>file`)
            raise _InputFailed(exc) from exc


def _write_all(out: BinaryIO, data: bytes) -> None:
    """Write all of ``data``: an unbuffered stdout (``python -u``) may take only part."""
    view = memoryview(data)
    while view:
        with _writing_output():
            written = out.write(view)
        view = view[written if written is not None else len(view) :]


class _UsageError(DriveError):
    """The command line was given arguments that do not go together (exit status 2)."""


def _as_commands(message: str, args: argparse.Namespace) -> str:
    """Return the library's error ``message`` with its hints as the command line's.

    ``overwrite=True`` is ``-f`` here, ``list('a')`` is ``asyncdrive ls lit://d/a``, ...
    """
    target = getattr(args, "target", None) or getattr(args, "drive", None)
    if not isinstance(target, str) or not target.startswith("lit://"):
        return message
    drive_id = _split(target)[0]

    def ls(folder: str) -> str:
        command = f"asyncdrive ls {shlex.quote(_join_id(drive_id, folder))}"
        return f'"{command}"' if "'" in command else f"'{command}'"

    message = rewrite_list_hints(message, ls)
    message = re.sub(
        r"Pass to= a file path \(to=('[^']*'), say\)", r"Name a LOCAL file (\1, say)", message
    )
    message = re.sub(r"component_name=('[^']*')", r"--component \1", message)
    replaced = {
        "Pass overwrite=True": "Pass -f",
        "pass recursive=True": "pass -r",
        "(delete(path, recursive=True))": "(with 'asyncdrive rm -r')",
        "pass component_name= ": "pass --component ",
        "use a Drive created with that component_name": "pass --component with that name",
        "create the drive with allow_duplicates=True": "pass --allow-duplicates",
        "use info() or get() for a file": "use 'asyncdrive info' or 'asyncdrive get' for a file",
        "Pass to= another local folder": "Pass another LOCAL folder",
        "pass force=True to remove it": "pass --force to remove it",
        "removing it then takes force=True": "removing it then takes --force",
        "pass a DriveEvent.id, a Watch.cursor, or '0'": "pass an event id (the first column "
        "of 'asyncdrive watch') or '0'",
        "(list(recursive=True))": f"('asyncdrive ls -r {drive_id}')",
        "invalid path '.': it names the whole drive; name a file or folder.": f"{drive_id} is "
        f"the whole drive; name a file or folder in it ({drive_id}/<path>).",
        "'.' is the whole drive, a folder": f"{drive_id} is the whole drive, a folder",
        "to delete every file of this component, pass '.'.": "to delete every file of this "
        f"component, name the drive ('asyncdrive rm -r {drive_id}').",
        ": timeout=": ": --timeout ",
        ": grace=": ": --grace ",
        ": since=": ": --since ",
        "with since='0'": "with --since 0",
        "(with since=, or from now)": "(with --since, or from now)",
        "rename it, or pass a valid name as to=.": "rename it, or name it in the drive path.",
        "or get to another (to=).": "or get to another LOCAL folder.",
        "Get to a folder on a writable filesystem (to=).": "Get to a writable filesystem.",
        "create a new Drive (or SyncDrive) to start it again": "run the command again to start it",
        "overwrite=True would replace the link itself": "-f would replace the link itself",
        "Pass to= the path it should write": "Pass the LOCAL path it should write",
        ": member=": ": --member ",
        "pass group= too": "pass --group too",
        # (a lit:// target's path: the library's words for a put's local path do not apply)
        " (and to the current directory for local files)": "",
    }
    for library, command in replaced.items():
        message = message.replace(library, command)
    return message


_EXIT_CODES: list[tuple[type[BaseException], int]] = [
    (_UsageError, 2),
    (FileNotFoundError, 4),
    (FileExistsError, 5),
    (ConnectionError, 6),
    (TimeoutError, 7),
]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (see ``asyncdrive --help``)."""
    _hold_closed_streams()
    _print_any_name()
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except BrokenPipeError:  # (as below: a reader gone)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # writing argparse's output (--help, --version): a full disk
        return _output_failed(exc)
    except SystemExit:  # argparse printed (--help, --version) and exits: to a closed stdout?
        try:
            sys.stdout.flush()
        except OSError as exc:
            return _output_failed(exc)
        raise
    if getattr(args, "member", None) is not None and args.group is None:
        # (A usage error, exit status 2, as argparse's own: not the drive's error, 1.)
        parser.error(f"watch: --member {args.member!r} names a group's member: pass --group too")
    args.root = args.root or None  # '' ($UNSET, say): as if not given (ASYNCDRIVE_ROOT...)
    try:
        status = _run_command(args)
        with _writing_output():
            sys.stdout.flush()  # here, not at exit: a reader gone (| head) is told below
        return status
    except DriveError as exc:
        return _report(exc, args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of the output left (`| head`): no traceback, and none at exit either,
        # when Python flushes stdout (the standard library's advice, in "signal").
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a process killed by SIGPIPE
    except _OutputFailed as failed:  # a full disk, > /dev/full: said in one line
        return _output_failed(failed.__cause__)
    except _InputFailed as failed:  # (nothing stored: the file in the drive was dropped)
        reason = getattr(failed.__cause__, "strerror", None) or failed.__cause__
        print(f"asyncdrive: error: cannot read stdin: {reason}", file=sys.stderr)
        return 1


def _output_failed(cause: BaseException | None) -> int:
    """Say in one line that stdout could not be written (``cause``); return status 1.

    Stdout then writes into /dev/null: what is left in its buffer fails no more at exit.
    """
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    reason = getattr(cause, "strerror", None) or cause
    print(f"asyncdrive: error: cannot write the output: {reason}", file=sys.stderr)
    return 1


def _hold_closed_streams() -> None:
    """Give a stdin, stdout or stderr the command was started without (``>&-``) a stand-in.

    Its number is taken by /dev/null, opened so that it refuses what the stream is for
    (stdout's writes fail with EBADF: said in one line once the work is done, as ``ls
    >&-`` says it; stdin's reads fail): else the next file or socket opened would take
    that number, and output meant for the terminal would go into it. A closed stderr
    takes what is said into nothing.
    """
    for fd, flags in ((0, os.O_WRONLY), (1, os.O_RDONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, flags)  # (the lowest free number: this one, those below open)
            if fd == 1:
                sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115  # (for the process)
            elif fd == 2:
                sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115


def _print_any_name() -> None:
    """Let stdout and stderr print any local name, as ``ls`` does.

    A name that is not valid UTF-8 is read by Python with lone surrogates, which a strict
    UTF-8 output (Python's default outside the C and POSIX locales) refused once the work
    was done: written back as its own bytes; where the encoding lacks a character, escaped.
    """
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and stream.errors == "strict":
            utf8 = codecs.lookup(stream.encoding).name == "utf-8"
            stream.reconfigure(errors="surrogateescape" if utf8 else "backslashreplace")


def _run_command(args: argparse.Namespace) -> int:
    if args.command in ("rebuild-index", "gc"):
        return _for_each_drive(args)
    if args.command != "server":
        return _run_file_command(args)
    if args.action == "start":
        _say(f"running: {redact_url(ensure_server_sync(resolve_root(args.root)))}")
    elif args.action == "stop":
        _say("stopped" if stop_server(args.root) else "not running")
    else:
        url = server_url(args.root)
        if url is None and server_runs(resolve_root(args.root)):
            log = resolve_root(args.root) / "server" / "server.log"
            _say(f"running, not answering (stalled, or loading its data?): see {log}")
            return 6  # as a call would fail: unavailable
        _say(f"running: {redact_url(url)}" if url else "not running")
        if os.environ.get(ENV_REDIS_URL):
            print(
                f"asyncdrive: {ENV_REDIS_URL} is set: drives use that server, not this root's "
                "embedded one (this status).",
                file=sys.stderr,
            )
        return 0 if url else 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
