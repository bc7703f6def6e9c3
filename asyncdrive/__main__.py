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
import sys
from collections.abc import Sequence
from pathlib import Path

from ._config import is_valid_name, resolve_root
from ._exceptions import DriveError
from ._server import ensure_server_sync, server_url, stop_server
from ._sync import SyncDrive


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asyncdrive",
        description="Share files between Python processes through a shared disk and Redis.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--root", default=None, help="the shared root (default: $ASYNCDRIVE_ROOT or per-user)"
    )
    server = commands.add_parser(
        "server",
        parents=[where],
        help="manage the embedded server of a root",
        description="Start, stop or inspect the embedded Redis-compatible server of a root.",
    )
    server.add_argument("action", choices=["start", "stop", "status"])

    drives = argparse.ArgumentParser(add_help=False, parents=[where])
    drives.add_argument("drive", nargs="?", help="the drive, lit://<name>")
    drives.add_argument("--all", action="store_true", help="every drive under the root")
    drives.add_argument(
        "--redis-url", default=None, help="the Redis server (default: $ASYNCDRIVE_REDIS_URL)"
    )
    rebuild = commands.add_parser(
        "rebuild-index",
        parents=[drives],
        help="rebuild a drive's index in Redis from the disk",
        description="Rebuild the index of a drive (or --all) from its files and metadata on "
        "disk, after the Redis server lost its data. Stop the writers first.",
    )
    rebuild.add_argument(
        "--verify", action="store_true", help="recompute every checksum from the bytes"
    )
    gc = commands.add_parser(
        "gc",
        parents=[drives],
        help="clean up after writers that died",
        description="Remove temporary uploads, undo half-done puts and drop orphaned bytes "
        "or index entries older than the grace period.",
    )
    gc.add_argument("--grace", type=float, default=3600.0, help="seconds (default 3600)")
    return parser


def _drive_ids(args: argparse.Namespace) -> list[str]:
    if args.all == bool(args.drive):
        raise DriveError("name one drive (lit://<name>) or pass --all, not both.")
    if args.drive:
        return [args.drive]
    base = resolve_root(args.root) / "drives"
    names = sorted(p.name for p in base.iterdir() if is_valid_name(p.name)) if base.is_dir() else []
    return [f"lit://{name}" for name in names]


def _for_each_drive(args: argparse.Namespace) -> None:
    for drive_id in _drive_ids(args):
        with SyncDrive(drive_id, root=args.root and Path(args.root), redis_url=args.redis_url) as d:
            if args.command == "rebuild-index":
                print(f"{drive_id}: {d.rebuild_index(verify=args.verify)} files indexed")
            else:
                print(f"{drive_id}: {d.gc(grace=args.grace)}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 success, 1 error, 3 not running)."""
    args = _parser().parse_args(argv)
    try:
        if args.command != "server":
            _for_each_drive(args)
        elif args.action == "start":
            print(f"running: {ensure_server_sync(resolve_root(args.root))}")
        elif args.action == "stop":
            print("stopped" if stop_server(args.root) else "not running")
        else:
            url = server_url(args.root)
            print(f"running: {url}" if url else "not running")
            return 0 if url else 3
    except DriveError as exc:
        print(f"asyncdrive: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
