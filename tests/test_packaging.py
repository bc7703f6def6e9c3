"""The distributions a release would publish, built from this checkout as `python -m build`
builds them: what users (the wheel) and those who run the tests from the sdist get."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import asyncdrive

from .conftest import REPO


def _source_tree(into: Path) -> Path:
    """Copy the checkout's own files (as a clone has them) into ``into``; return it.

    Not the checkout itself: setuptools puts into an sdist what an ``*.egg-info`` left
    there by an earlier build lists, whatever MANIFEST.in says now.
    """
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=False
    ).stdout.split(b"\0")
    names = [Path(name.decode()) for name in listed if name]
    if not names:  # (not a git checkout: an unpacked sdist, say)
        skipped = {".venv", "build", "dist", ".git"}
        names = [
            path.relative_to(REPO)
            for path in REPO.rglob("*")
            if path.is_file()
            and not skipped & set(path.relative_to(REPO).parts)
            and not any(part.endswith((".egg-info", "_cache")) for part in path.parts)
            and "__pycache__" not in path.parts
        ]
    for name in names:
        (into / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, into / name)
    return into


def test_the_wheel_and_the_sdist_carry_what_they_must_and_nothing_else(tmp_path: Path) -> None:
    source = _source_tree(tmp_path / "source")
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path), str(source)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    version = asyncdrive.__version__
    (wheel_path,) = tmp_path.glob(f"asyncdrive-{version}-py3-none-any.whl")
    (sdist_path,) = tmp_path.glob(f"asyncdrive-{version}.tar.gz")

    wheel = zipfile.ZipFile(wheel_path)
    names = set(wheel.namelist())
    info = f"asyncdrive-{version}.dist-info"
    assert {n.split("/")[0] for n in names} == {"asyncdrive", info}  # no tests, no bench
    assert {"asyncdrive/py.typed", "asyncdrive/__init__.py", f"{info}/licenses/LICENSE"} <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    metadata = Parser().parsestr(wheel.read(f"{info}/METADATA").decode())
    assert (metadata["Version"], metadata["License-Expression"]) == (version, "MIT")
    assert "anyio>=4.12.1" in (metadata.get_all("Requires-Dist") or [])
    assert metadata["Requires-Python"] == ">=3.11"
    entry_points = wheel.read(f"{info}/entry_points.txt").decode()
    assert "asyncdrive = asyncdrive.__main__:main" in entry_points  # the command line
    assert "lit = asyncdrive._fsspec:DriveFileSystem" in entry_points  # fsspec's lit://
    wheel.close()

    with tarfile.open(sdist_path) as sdist:
        inside = {name.partition("/")[2] for name in sdist.getnames()}
    # Its tests run from it: the whole test package, and what the tests read or start.
    needed = {
        "LICENSE", "README.md", "CHANGELOG.md", "compose.yaml", "pyproject.toml",
        "tests/__init__.py", "tests/conftest.py", "tests/servers.py", "tests/procs.py",
        "examples/transfer_files.py", "bench/__main__.py", "asyncdrive/py.typed",
    }  # fmt: skip
    assert needed <= inside, needed - inside
    assert not [n for n in inside if n.startswith("bench/results/") and n != "bench/results"]
    assert not [n for n in inside if "__pycache__" in n or n.startswith((".venv", ".git/"))]
