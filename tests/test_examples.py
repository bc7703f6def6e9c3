"""The examples, run as a user runs them: ``python examples/<name>.py`` in a fresh process.

Each test checks the exact output, exit status 0 and an empty stderr (warnings are errors in
the example and in its worker processes, which inherit ``-W error``), that the example left
nothing in the directory it was run from, and that it left its drives empty, so that it can be
run again: every example is run twice.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import asyncdrive
from asyncdrive import SyncDrive

from .conftest import REPO
from .servers import ServerProcess

EXAMPLES = REPO / "examples"

BASICS = """\
list('.') -> []
put('a.txt')
list('.') -> ['a.txt']
get('a.txt') -> a.txt holds 'Hello World !'
delete('a.txt')
list('.') -> []
"""

THREE_WORKS = """\
lit://drive_1: ['a.txt', 'b.txt']
  a.txt put by root.work_a
  b.txt put by root.work_b
lit://drive_2: ['b.txt', 'c.txt']
  b.txt put by root.work_b
  c.txt put by root.work_c
cleaned up: lit://drive_1 [] lit://drive_2 []
"""

TRANSFER_FILES = """\
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

TRANSFER_ASYNC = """\
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

#: Each example, what it prints, and the drives it uses.
CASES = {
    "basics.py": (BASICS, ["lit://drive"]),
    "three_works.py": (THREE_WORKS, ["lit://drive_1", "lit://drive_2"]),
    "transfer_files.py": (TRANSFER_FILES, ["lit://drive_1"]),
    "transfer_async.py": (TRANSFER_ASYNC, ["lit://drive_1"]),
}


def run_example(name: str, *, cwd: Path, env: dict[str, str]) -> str:
    """Run ``examples/<name>`` and return its stdout, failing on any error output."""
    cwd.mkdir(exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / name)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (proc.returncode, proc.stderr) == (0, ""), f"{name} failed:\n{proc.stderr}"
    assert list(cwd.iterdir()) == [], f"{name} left files in the directory it was run from"
    return proc.stdout


def assert_drives_empty(drive_ids: list[str], *, root: Path, redis_url: str) -> None:
    """Check the index and the disk: no file is left in any of the drives."""
    for drive_id in drive_ids:
        with SyncDrive(drive_id, root=root, redis_url=redis_url) as drive:
            assert drive.list(".", recursive=True) == [], drive_id
        folder = root / "drives" / drive.name
        assert folder.is_dir(), f"{drive_id} was never used under {root}"
        # Only the marker that the drive is in use stays (see the README's disk layout).
        left = [p for p in folder.rglob("*") if not p.is_dir()]
        assert [p.relative_to(folder).as_posix() for p in left] == [".asyncdrive-drive"], left


@pytest.fixture
def example_env(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """`env`, with a server of this test's own.

    The examples use fixed drive names (``lit://drive_1``, as the seed does), unlike the
    other tests: on the session's server, an example that failed half-way would leave files
    that break the next example, and with ``--redis-url`` they would write into that
    server's real ``drive_1``.
    """
    # A short folder: unix socket paths are limited to about 100 bytes.
    folder = Path(tempfile.mkdtemp(prefix="adex-"))
    server = ServerProcess(folder)
    server.start()
    try:
        yield {**env, "ASYNCDRIVE_REDIS_URL": server.url}
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("name", sorted(CASES))
def test_example(name: str, example_env: dict[str, str], root: Path, tmp_path: Path) -> None:
    expected, drive_ids = CASES[name]
    for run in ("first", "second"):
        stdout = run_example(name, cwd=tmp_path / run, env=example_env)
        assert stdout == expected, f"{run} run"
        assert_drives_empty(drive_ids, root=root, redis_url=example_env["ASYNCDRIVE_REDIS_URL"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_docstring_shows_the_output(name: str) -> None:
    expected, _ = CASES[name]
    doc = ast.get_docstring(ast.parse((EXAMPLES / name).read_text()))
    assert doc is not None
    assert "\n" + textwrap.indent(expected, "    ") in doc + "\n"


def server_pid(root: Path) -> int:
    """The pid of the root's embedded server, from its ``server.json`` (see the README)."""
    pid: int = json.loads((root / "server" / "server.json").read_text())["pid"]
    return pid


def without_configuration() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ASYNCDRIVE_")}


@pytest.mark.parametrize("name", ["transfer_files.py", "three_works.py"])
def test_embedded_server(name: str, tmp_path: Path) -> None:
    # ASYNCDRIVE_ROOT only, no Redis URL: the example starts the root's embedded server. In
    # three_works, three processes need it at the same moment: exactly one must start it.
    expected, drive_ids = CASES[name]
    root = tmp_path / "root"
    env = {**without_configuration(), "ASYNCDRIVE_ROOT": str(root)}
    try:
        assert run_example(name, cwd=tmp_path / "first", env=env) == expected
        url = asyncdrive.server_url(root)
        assert url is not None
        pid = server_pid(root)
        # The server outlives the example; a second run reuses it.
        assert run_example(name, cwd=tmp_path / "second", env=env) == expected
        assert (asyncdrive.server_url(root), server_pid(root)) == (url, pid)
        log = (root / "server" / "server.log").read_text()
        assert log.count("is starting oO0OoO0OoO0Oo") == 1, log
        assert_drives_empty(drive_ids, root=root, redis_url=url)
    finally:
        asyncdrive.stop_server(root)
    assert asyncdrive.server_url(root) is None


@pytest.mark.skipif(sys.platform == "darwin", reason="the default root ignores XDG_DATA_HOME")
def test_transfer_files_without_any_configuration(tmp_path: Path) -> None:
    # The README's first command: no ASYNCDRIVE_* at all, so the default root, here moved
    # into tmp_path through XDG_DATA_HOME.
    env = {**without_configuration(), "XDG_DATA_HOME": str(tmp_path / "data")}
    root = tmp_path / "data" / "asyncdrive"
    try:
        assert run_example("transfer_files.py", cwd=tmp_path / "cwd", env=env) == TRANSFER_FILES
        url = asyncdrive.server_url(root)
        assert url is not None
        assert_drives_empty(["lit://drive_1"], root=root, redis_url=url)
    finally:
        asyncdrive.stop_server(root)


def test_watch_new_files(example_env: dict[str, str], tmp_path: Path) -> None:
    # Which evaluator gets which checkpoint varies; that each is evaluated once does not.
    logger = [f"logger: added ckpt/{i}.pt by trainer" for i in range(6)]
    for run in ("first", "second"):  # the second run starts by clearing the first's files
        lines = run_example("watch_new_files.py", cwd=tmp_path / run, env=example_env)
        lines_list = lines.splitlines()
        assert lines_list[:6] == logger, run
        evaluated = sorted(line.split()[0] for line in lines_list[6:12])
        assert evaluated == [f"ckpt/{i}.pt" for i in range(6)], run
        assert all(" evaluated by evaluator-" in line for line in lines_list[6:12])
        assert lines_list[12:] == ["every checkpoint evaluated exactly once: True"], run


def test_the_readmes_first_example_runs_as_shown(
    example_env: dict[str, str], tmp_path: Path
) -> None:
    """Pasted into a file and run: it prints what its comment says, and leaves ./a.txt."""
    readme = (REPO / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "first.py").write_text(code)
    proc = subprocess.run(
        [sys.executable, "-W", "error", "first.py"],
        cwd=tmp_path, env=example_env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    assert proc.stdout == "['a.txt']\n"
    assert (tmp_path / "a.txt").read_text() == "Hello World !"
