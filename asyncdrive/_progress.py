"""Progress bars for the command line's ``put`` and ``get`` (the library itself never prints).

The library copies each file in a worker thread and reports nothing while it does, so the
bar measures what that thread has really written: it looks at the files this process has
open (``/proc/self/fd``). The file being read says which file of the transfer is in flight
(the library copies a folder's files in sorted order, one at a time, so the files before it
are done), and the size of the file being written says how far it got: for a put, the
upload in ``<root>/drives/<name>/.tmp/``; for a get, the file beside the local target (a
temporary name, or none until it is linked in place). Where ``/proc`` is missing the bar
only advances as whole files finish.

Example:
    >>> with Transfer("put", [(Path("big.bin").resolve(), 2**30)], writes_in=tmp) as bar:
    ...     drive.put("big.bin")
    ...     bar.done_through(1)

"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from ._storage import TMP_PREFIX

_FDS = Path("/proc/self/fd")
_POLL = 0.1
#: How ``/proc/self/fd`` names a file made without a name (``O_TMPFILE``), as the library
#: makes uploads and a get's copies where the filesystem allows: "#<inode> (deleted)".
_UNNAMED = re.compile(r"#\d+ \(deleted\)")


def _open_files() -> list[tuple[Path, int]]:
    """Return (path, current size) of each regular file this process has open."""
    found: list[tuple[Path, int]] = []
    try:
        names = os.listdir(_FDS)
    except OSError:
        return found
    for name in names:
        link = _FDS / name
        try:
            target = os.readlink(link)
            size = os.stat(link).st_size  # the open file itself, even if renamed since
        except OSError:
            continue  # closed meanwhile, or not a file
        if target.startswith("/"):
            found.append((Path(target), size))
    return found


class Transfer:
    """One bar over a sequence of files copied by the library, by bytes really written.

    Args:
        verb: the bar's label ("put" or "get").
        files: (path read by the library, size) of every file, in the order it copies them.
        writes_in: for a put, the drive's upload folder; None for a get, whose temporary
            files are beside each local target.
        reads_below: for a get, the drive's folder on disk: a file read below it whose
            path is not in ``files`` is a single file whose size was not known in advance
            (``get --timeout`` of a path put meanwhile) and becomes the bar's total.

    """

    def __init__(
        self,
        verb: str,
        files: Sequence[tuple[Path, int]],
        *,
        writes_in: Path | None = None,
        reads_below: Path | None = None,
    ) -> None:
        self._files = list(files)
        self._where: dict[Path, list[int]] = {}
        for index, (path, _size) in enumerate(self._files):
            self._where.setdefault(path, []).append(index)
        self._before = [0]
        for _path, size in self._files:
            self._before.append(self._before[-1] + size)
        self._writes_in = writes_in
        self._reads_below = reads_below
        self._floor = 0  # files known to be done
        self._done = 0
        self._total: int | None = self._before[-1] if self._files else None
        self._verb = verb
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            # Lines printed meanwhile go above the bar, unless stdout is not the terminal.
            redirect_stdout=sys.stdout.isatty(),
        )
        self._task = self._progress.add_task(verb, total=self._total)
        self._thread = threading.Thread(target=self._run, name="asyncdrive-progress", daemon=True)

    def __enter__(self) -> Transfer:
        self._progress.start()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        if exc_type is None:
            with self._lock:
                if self._total is None:
                    self._total = self._done
                self._done = self._total
            count = len(self._files)
            name = self._files[0][0].name if count == 1 else f"{count} files"
            self._show(f"{self._verb} {name}" if count else self._verb)
        self._progress.stop()

    def done_through(self, count: int) -> None:
        """Tell the bar that the first ``count`` files are copied (the library returned)."""
        with self._lock:
            self._floor = max(self._floor, min(count, len(self._files)))
            self._done = max(self._done, self._before[self._floor])
        self._show(None)

    def _run(self) -> None:
        while not self._stop.wait(_POLL):
            self._show(self.poll())

    @property
    def completed(self) -> int:
        """The bytes counted as written so far."""
        with self._lock:
            return self._done

    @property
    def total(self) -> int | None:
        """The bytes of the whole transfer, or None while unknown."""
        with self._lock:
            return self._total

    def poll(self) -> str | None:
        """Measure the bytes written so far; return the bar's label for the file in flight."""
        reading: int | None = None
        unknown_size: int | None = None
        written = 0
        for path, size in _open_files():
            if path.name.startswith(TMP_PREFIX) or _UNNAMED.fullmatch(path.name):
                if self._writes_in is None or path.parent == self._writes_in:
                    written = max(written, size)
            elif path in self._where:
                later = [i for i in self._where[path] if i >= self._floor]
                if later:
                    reading = later[0]
            elif self._reads_below is not None and path.is_relative_to(self._reads_below):
                unknown_size = size
        with self._lock:
            if reading is not None:
                start, size = self._before[reading], self._files[reading][1]
                self._done = max(self._done, start + min(written, size))
                return f"{self._verb} {self._files[reading][0].name}"
            if unknown_size is not None and not self._files:
                self._total = unknown_size
                self._done = max(self._done, min(written, unknown_size))
        return None

    def _show(self, description: str | None) -> None:
        with self._lock:
            done, total = self._done, self._total
        if description is None:
            self._progress.update(self._task, completed=done, total=total)
        else:
            # The label (the file in flight) is drawn at once, not at the next refresh.
            self._progress.update(
                self._task, completed=done, total=total, description=description, refresh=True
            )
