"""The command line's progress bar for ``put`` and ``get`` (the library itself never prints).

Fed by the library's ``progress=`` callbacks (see ``_progress``): the bytes each put or
get has copied, as it copies them. A command of several transfers (``put a b lit://d/``)
draws one bar over all of them, each call's bytes after those of the calls before.

Example:
    >>> with TransferBar("put big.bin", total=2**30) as bar:
    ...     drive.put("big.bin", progress=bar.part())

"""

from __future__ import annotations

import sys
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

from ._progress import ProgressCallback


class TransferBar:
    """One bar on stderr over the transfers of one command, by bytes copied.

    Args:
        label: what the bar says (``put big.bin``, ``get ckpt``).
        total: the bytes of all the transfers, if known before they start (a put's local
            files); else each transfer's own total counts once it reports it.

    """

    def __init__(self, label: str, total: int | None = None) -> None:
        self.completed = 0
        self.total = total
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
        self._task = self._progress.add_task(label, total=total)

    def __repr__(self) -> str:
        return f"<TransferBar {self.completed}/{self.total} bytes>"

    def __enter__(self) -> TransferBar:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:  # all done: the bar stays on the terminal, full
            self.total = max(self.total or 0, self.completed)
            self._show(self.total, refresh=True)
        self._progress.stop()

    def part(self) -> ProgressCallback:
        """Return the ``progress=`` callback of the next transfer, counted after the others."""
        before = self.completed

        def report(done: int, total: int) -> None:
            self.total = max(self.total or 0, before + total)
            self._show(before + done)

        return report

    def advance(self, done: int) -> None:
        """Count ``done`` more bytes of a transfer of no known size (``put -``, stdin)."""
        self._show(self.completed + done)

    def _show(self, completed: int, *, refresh: bool = False) -> None:
        self.completed = completed
        self._progress.update(self._task, completed=completed, total=self.total, refresh=refresh)
