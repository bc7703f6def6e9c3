"""Transfer files with Drive, in asyncio code: the async `Drive` and ``await``.

The same scenario as ``transfer_files.py``, written for asyncio programs. The coordinator
creates ``Drive("lit://drive_1")`` and passes it to two worker processes ("spawn"), each
running its own event loop with ``asyncio.run`` in its own working directory. Each worker
sets ``ASYNCDRIVE_COMPONENT`` before the drive's first use, so it writes as its own
component. The coordinator waits for the workers without blocking its event loop::

    python examples/transfer_async.py

It prints::

    work_1: writes as 'root.work_1'
    work_1: put a.txt, then deleted the local copy
    work_2: writes as 'root.work_2'
    work_2: await drive.list('.') -> ['a.txt']
    work_2: os.path.exists('a.txt') -> False
    work_2: await drive.get('a.txt')
    work_2: os.path.exists('a.txt') -> True
    work_2: first line of a.txt -> Hello World !
    coordinator: removed a.txt as 'root.work_1'; await drive.list('.') -> []

"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import sys
import tempfile
from collections.abc import Callable, Coroutine
from typing import Any

from asyncdrive import Drive, DriveFileNotFoundError


async def work_1(drive: Drive) -> None:
    """Create a.txt, put it into the drive, then delete the local copy."""
    os.environ["ASYNCDRIVE_COMPONENT"] = "root.work_1"  # before the drive's first use
    async with drive:
        print(f"work_1: writes as {drive.component_name!r}")

        # A few bytes: writing them directly blocks the loop for no measurable time.
        with open("a.txt", "w") as f:
            f.write("Hello World !")

        await drive.put("a.txt")  # the copy runs in a worker thread, off the loop
        os.remove("a.txt")
        print("work_1: put a.txt, then deleted the local copy")


async def work_2(drive: Drive) -> None:
    """List the drive, then get a.txt into this worker's own directory and read it."""
    os.environ["ASYNCDRIVE_COMPONENT"] = "root.work_2"
    async with drive:
        print(f"work_2: writes as {drive.component_name!r}")
        print("work_2: await drive.list('.') ->", await drive.list("."))  # ['a.txt']
        print("work_2: os.path.exists('a.txt') ->", os.path.exists("a.txt"))  # False

        await drive.get("a.txt")
        print("work_2: await drive.get('a.txt')")
        print("work_2: os.path.exists('a.txt') ->", os.path.exists("a.txt"))  # True

        with open("a.txt") as f:
            print("work_2: first line of a.txt ->", f.readlines()[0])  # Hello World !


Work = Callable[[Drive], Coroutine[Any, Any, None]]


def run_in_own_folder(work: Work, drive: Drive) -> None:
    """The worker process: run ``work`` on an event loop of its own, in a scratch directory."""
    with (
        tempfile.TemporaryDirectory(prefix=f"asyncdrive-{work.__name__}-") as scratch,
        contextlib.chdir(scratch),
    ):
        asyncio.run(work(drive))


async def main() -> None:
    context = multiprocessing.get_context("spawn")
    async with Drive("lit://drive_1") as drive:
        try:
            for work in (work_1, work_2):
                process = context.Process(
                    target=run_in_own_folder, args=(work, drive), name=work.__name__
                )
                process.start()
                # join() blocks: wait in a thread so this event loop stays free.
                await asyncio.to_thread(process.join)
                if process.exitcode != 0:
                    sys.exit(f"transfer_async: {process.name} failed (see the traceback above)")
        finally:
            # Leave the drive as we found it; delete() removes only the caller's own copy,
            # so delete as the owner.
            async with Drive(drive.id, component_name="root.work_1") as as_work_1:
                with contextlib.suppress(DriveFileNotFoundError):
                    await as_work_1.delete("a.txt")
        listing = await drive.list(".")
        print(f"coordinator: removed a.txt as 'root.work_1'; await drive.list('.') -> {listing}")


if __name__ == "__main__":
    asyncio.run(main())
