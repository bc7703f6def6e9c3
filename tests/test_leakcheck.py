"""The opt-in leak check (`tests/leakcheck.py`, ``pytest --leak-check``) itself."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from .leakcheck import LeakCheck


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="it reads /proc: Linux only")
def test_the_leak_check_names_what_was_left_and_only_that(tmp_path: Path) -> None:
    check = LeakCheck()
    check.install()  # (registers event loops as they are made: undone below)
    try:
        before = check.snapshot()
        fd = os.open(tmp_path / "kept-open", os.O_CREAT | os.O_RDONLY)
        stop = threading.Event()
        thread = threading.Thread(target=stop.wait, name="left-behind")
        thread.start()
        loop = asyncio.new_event_loop()
        try:
            left = check.leaks(before, "this test")
        finally:
            stop.set()
            thread.join()
            loop.close()
            os.close(fd)
        assert any(f"fd {fd} still open -> " in line and "kept-open" in line for line in left)
        assert any("thread still alive" in line and "left-behind" in line for line in left)
        assert any("event loop not closed" in line for line in left), left
        # Named once: what stayed open joins the baseline; what is closed is not named.
        assert check.leaks(check.snapshot(), "the next test") == []
    finally:
        check.uninstall()
