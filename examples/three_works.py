"""Component interactions: three worker processes share two drives.

This is the seed's "Component interactions with Drives" scenario, with each LightningWork
played by a separate process (multiprocessing, "spawn" start method) that has its own working
directory and writes under its own component name:

- Work_A puts a.txt into lit://drive_1;
- Work_B puts b.txt into both lit://drive_1 and lit://drive_2;
- Work_C puts c.txt into lit://drive_2.

The works run at the same time. Afterwards the main process lists both drives, shows which
component put each file, and deletes the files so the example can be run again::

    python examples/three_works.py

It prints::

    lit://drive_1: ['a.txt', 'b.txt']
      a.txt put by root.work_a
      b.txt put by root.work_b
    lit://drive_2: ['b.txt', 'c.txt']
      b.txt put by root.work_b
      c.txt put by root.work_c
    cleaned up: lit://drive_1 [] lit://drive_2 []

"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
import tempfile

from asyncdrive import SyncDrive

DRIVE_1 = "lit://drive_1"
DRIVE_2 = "lit://drive_2"


def create_file(name: str) -> None:
    with open(name, "w") as f:
        f.write("Hello World !")


def work_a() -> None:
    # Any component can create a drive object: knowing the name is enough.
    with SyncDrive(DRIVE_1, component_name="root.work_a") as drive_1:
        create_file("a.txt")
        drive_1.put("a.txt")


def work_b() -> None:
    # Work_B has access to two drives.
    with (
        SyncDrive(DRIVE_1, component_name="root.work_b") as drive_1,
        SyncDrive(DRIVE_2, component_name="root.work_b") as drive_2,
    ):
        create_file("b.txt")
        drive_1.put("b.txt")
        drive_2.put("b.txt")


def work_c() -> None:
    with SyncDrive(DRIVE_2, component_name="root.work_c") as drive_2:
        create_file("c.txt")
        drive_2.put("c.txt")


def run_in_own_folder(work_name: str) -> None:
    """Run one work in a scratch directory of its own, as a LightningWork would be."""
    work = {"work_a": work_a, "work_b": work_b, "work_c": work_c}[work_name]
    with (
        tempfile.TemporaryDirectory(prefix=f"asyncdrive-{work_name}-") as scratch,
        contextlib.chdir(scratch),
    ):
        work()


def delete_all(drive_id: str) -> None:
    """Delete every file of the drive, each as the component that put it."""
    with SyncDrive(drive_id) as drive:
        for path in drive.list(".", recursive=True):
            owner = drive.info(path).component_name
            # delete() removes only the caller's own copy: act as the owner.
            with SyncDrive(drive_id, component_name=owner) as as_owner:
                as_owner.delete(path)


def main() -> None:
    # "spawn" starts each work in a fresh interpreter, as separate machines would: no memory
    # is shared, only the environment and the arguments (here, the work's name).
    context = multiprocessing.get_context("spawn")
    works = [
        context.Process(target=run_in_own_folder, args=(name,), name=name)
        for name in ("work_a", "work_b", "work_c")
    ]
    try:
        for process in works:
            process.start()
        for process in works:
            process.join()
        failed = [p.name for p in works if p.exitcode != 0]
        if failed:
            sys.exit(f"three_works: {', '.join(failed)} failed (see the traceback above)")

        for drive_id in (DRIVE_1, DRIVE_2):
            with SyncDrive(drive_id) as drive:
                paths = drive.list(".")
                print(f"{drive_id}: {paths}")
                for path in paths:
                    print(f"  {path} put by {drive.info(path).component_name}")
    finally:
        # Even after a failure, so that the next run starts from empty drives.
        for drive_id in (DRIVE_1, DRIVE_2):
            delete_all(drive_id)

    with SyncDrive(DRIVE_1) as drive_1, SyncDrive(DRIVE_2) as drive_2:
        print(f"cleaned up: {DRIVE_1} {drive_1.list('.')} {DRIVE_2} {drive_2.list('.')}")


if __name__ == "__main__":
    main()
