"""The Drive's supported actions: list, put, get and delete, with a blocking `SyncDrive`.

This is the seed's "Supported actions with Drives" scenario. Run it with no configuration
(an embedded server is started for the default root), or point it somewhere with
``ASYNCDRIVE_ROOT`` and ``ASYNCDRIVE_REDIS_URL``::

    python examples/basics.py

It prints::

    list('.') -> []
    put('a.txt')
    list('.') -> ['a.txt']
    get('a.txt') -> a.txt holds 'Hello World !'
    delete('a.txt')
    list('.') -> []

"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from asyncdrive import SyncDrive


def main() -> None:
    # Local paths are relative to the current directory: work in a scratch folder so the
    # example leaves nothing behind where it is run.
    with (
        tempfile.TemporaryDirectory(prefix="asyncdrive-basics-") as scratch,
        contextlib.chdir(scratch),
        SyncDrive("lit://drive") as drive,
    ):
        print("list('.') ->", drive.list("."))  # [] : the drive is empty

        with open("a.txt", "w") as f:
            f.write("Hello World !")

        drive.put("a.txt")  # copy ./a.txt into the drive, as a.txt
        print("put('a.txt')")

        print("list('.') ->", drive.list("."))  # ['a.txt']

        # The local a.txt is identical to the drive's, so get() has nothing to copy and
        # succeeds; a local file with other content would need get(..., overwrite=True).
        drive.get("a.txt")
        print("get('a.txt') -> a.txt holds", repr(Path("a.txt").read_text()))

        drive.delete("a.txt")  # remove the drive's copy; the local file stays
        print("delete('a.txt')")

        print("list('.') ->", drive.list("."))  # [] again, so the example can be rerun


if __name__ == "__main__":
    main()
