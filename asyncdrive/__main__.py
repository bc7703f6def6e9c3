"""The ``asyncdrive`` command line (also ``python -m asyncdrive``).

Example:
    $ asyncdrive server status
    running: unix:///home/me/.local/share/asyncdrive/server/valkey.sock
    $ asyncdrive server stop --root /shared
    stopped

"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._config import resolve_root
from ._exceptions import DriveError
from ._server import ensure_server_sync, server_url, stop_server


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asyncdrive",
        description="Share files between Python processes through a shared disk and Redis.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    server = commands.add_parser(
        "server",
        help="manage the embedded server of a root",
        description="Start, stop or inspect the embedded Redis-compatible server of a root.",
    )
    server.add_argument("action", choices=["start", "stop", "status"])
    server.add_argument(
        "--root", default=None, help="the shared root (default: $ASYNCDRIVE_ROOT or per-user)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 success, 1 error, 3 not running)."""
    args = _parser().parse_args(argv)
    try:
        if args.action == "start":
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
