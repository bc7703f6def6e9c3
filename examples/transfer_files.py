"""Transfer files with Drive: a coordinator passes one drive to two worker processes.

This is the seed's "Transfer files with Drive" scenario. The coordinator (the seed's Flow)
creates ``SyncDrive("lit://drive_1")`` and hands the drive object itself to two workers,
each a separate process ("spawn") with its own working directory. A drive pickles as the
arguments it was created with, so each worker gets a drive that connects afresh in its own
process.

The drive is created without ``component_name``, so it is resolved where the drive is used:
each worker process sets ``ASYNCDRIVE_COMPONENT`` to its work's name before the work runs,
as a framework names its components, and writes as that component. Run alone (``--role``),
a work takes ``ASYNCDRIVE_COMPONENT`` from its environment, or else that name.

- Work_1 (``root.work_1``) writes a.txt, puts it into the drive, and deletes its local copy.
- Work_2 (``root.work_2``) lists the drive, gets a.txt and reads it.

No configuration is needed: the first process to use the drive starts an embedded server
for the default root (``~/.local/share/asyncdrive``), and the others reuse it. Set
``ASYNCDRIVE_ROOT`` and/or ``ASYNCDRIVE_REDIS_URL`` to use another root or a Redis server::

    python examples/transfer_files.py

Each work can also run alone, as the two worker services of ``compose.yaml`` do, on
different machines sharing a root and a Redis server::

    python examples/transfer_files.py --role work_1   # then, elsewhere:
    python examples/transfer_files.py --role work_2

It prints (the first line says ``default`` unless ASYNCDRIVE_COMPONENT is set)::

    coordinator: lit://drive_1 would write here as 'default'
    work_1: writes as 'root.work_1'
    work_1: put a.txt, then deleted the local copy
    work_2: writes as 'root.work_2'
    work_2: drive.list('.') -> ['a.txt']
    work_2: os.path.exists('a.txt') -> False
    work_2: drive.get('a.txt')
    work_2: os.path.exists('a.txt') -> True
    work_2: first line of a.txt -> Hello World !
    coordinator: removed a.txt as 'root.work_1'; drive.list('.') -> []

"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import tempfile
from collections.abc import Callable

from asyncdrive import DriveFileNotFoundError, SyncDrive


def work_1(drive: SyncDrive) -> None:
    """Create a.txt, put it into the drive, then delete the local copy."""
    with drive:
        print(f"work_1: writes as {drive.component_name!r}")

        # 1. Create a file.
        with open("a.txt", "w") as f:
            f.write("Hello World !")

        # 2. Put the file into the drive.
        drive.put("a.txt")

        # 3. Delete it locally: from now on only the drive has it.
        os.remove("a.txt")
        print("work_1: put a.txt, then deleted the local copy")


def work_2(drive: SyncDrive) -> None:
    """List the drive, then get a.txt into this worker's own directory and read it."""
    with drive:
        print(f"work_2: writes as {drive.component_name!r}")
        print("work_2: drive.list('.') ->", drive.list("."))  # ['a.txt']
        print("work_2: os.path.exists('a.txt') ->", os.path.exists("a.txt"))  # False

        drive.get("a.txt")  # transfer the file from the drive to the local filesystem
        print("work_2: drive.get('a.txt')")
        print("work_2: os.path.exists('a.txt') ->", os.path.exists("a.txt"))  # True

        with open("a.txt") as f:
            print("work_2: first line of a.txt ->", f.readlines()[0])  # Hello World !


#: Each work's component name, as the seed's app names them.
COMPONENTS = {"work_1": "root.work_1", "work_2": "root.work_2"}


def run_as_component(work: Callable[[SyncDrive], None], drive: SyncDrive) -> None:
    """Run ``work`` in a worker process as its component (`COMPONENTS`), in a folder of its own."""
    # Set before the drive's first use: that is when its component name is resolved.
    os.environ["ASYNCDRIVE_COMPONENT"] = COMPONENTS[work.__name__]
    run_in_own_folder(work, drive)


def run_in_own_folder(work: Callable[[SyncDrive], None], drive: SyncDrive) -> None:
    """Run ``work`` in a scratch directory of its own, as a separate machine would."""
    with (
        tempfile.TemporaryDirectory(prefix=f"asyncdrive-{work.__name__}-") as scratch,
        contextlib.chdir(scratch),
    ):
        work(drive)


def run_one_role(role: str) -> None:
    """Run one work alone, as a container of compose.yaml does (``--role work_1``)."""
    works = {"work_1": work_1, "work_2": work_2}
    if role not in works:
        sys.exit(f"transfer_files: --role must be one of {', '.join(works)}, not {role!r}")
    # Configured only by ASYNCDRIVE_* variables: root, Redis URL and component name (else
    # the work's own name).
    if not os.environ.get("ASYNCDRIVE_COMPONENT"):  # (set but empty: as unset)
        os.environ["ASYNCDRIVE_COMPONENT"] = COMPONENTS[role]
    run_in_own_folder(works[role], SyncDrive("lit://drive_1"))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--role":
        run_one_role(sys.argv[2])
        return
    # "spawn" starts each worker in a fresh interpreter: nothing of this process's memory
    # is shared, so the drive travels as a pickle of its arguments.
    context = multiprocessing.get_context("spawn")
    with SyncDrive("lit://drive_1") as drive:
        # flush=True: the workers print to the same stdout, and this line must come first.
        print(f"coordinator: {drive.id} would write here as {drive.component_name!r}", flush=True)
        try:
            # The works run one after the other: Work_2 reads what Work_1 put.
            for work in (work_1, work_2):
                process = context.Process(
                    target=run_as_component, args=(work, drive), name=work.__name__
                )
                process.start()
                process.join()
                if process.exitcode != 0:
                    sys.exit(f"transfer_files: {process.name} failed (see the traceback above)")
        finally:
            # Leave the drive as we found it: while root.work_1 owns a.txt, no other
            # component may put an a.txt into lit://drive_1. delete() removes only the
            # caller's own copy, so delete as the owner.
            with (
                SyncDrive(drive.id, component_name="root.work_1") as as_work_1,
                contextlib.suppress(DriveFileNotFoundError),  # Work_1 failed before putting
            ):
                as_work_1.delete("a.txt")
        print(f"coordinator: removed a.txt as 'root.work_1'; drive.list('.') -> {drive.list('.')}")


if __name__ == "__main__":
    main()
