"""Measure the original Lightning Drive: run by the original_drive benchmark in its own venv.

``python bench/_lightning_worker.py '<json plan>'`` imports ``lightning_app`` (2.3.2, from the
separate venv the benchmark creates), times a sequential put and get of the plan's files and
the listing of a folder, and prints one JSON line of results. It uses only the standard
library besides ``lightning_app``: asyncdrive is not installed in that venv.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

COMPONENT = "root.work_1"


def _names(n: int) -> list[str]:
    return [f"f{i:05d}.bin" for i in range(n)]


def main(plan: dict[str, Any]) -> dict[str, Any]:
    # The original keeps its files under SHARED_MOUNT_DIRECTORY (default ./.shared).
    os.environ["SHARED_MOUNT_DIRECTORY"] = plan["shared"]
    storage = importlib.import_module("lightning_app.storage")
    version = importlib.import_module("lightning_app").__version__
    base, dest = Path(plan["base"]), Path(plan["dest"])
    (dest / "small").mkdir(parents=True, exist_ok=True)  # its get makes no parent folders
    # Outside an app, its Drive works once component_name is given; root_folder is the
    # local folder that relative paths start from.
    writer = storage.Drive(plan["drive"], component_name=COMPONENT, root_folder=str(base))
    reader = storage.Drive(plan["drive"], component_name=COMPONENT, root_folder=str(dest))
    names = _names(plan["files"])
    started = time.perf_counter()
    for name in names:
        writer.put(f"small/{name}")
    put_s = time.perf_counter() - started
    started = time.perf_counter()
    for name in names:
        reader.get(f"small/{name}")
    get_s = time.perf_counter() - started
    if (dest / "small" / names[-1]).read_bytes() != (base / "small" / names[-1]).read_bytes():
        raise RuntimeError("the original Drive's get returned other bytes")
    # Listing: a folder of exactly plan["list_files"] entries, in its own drive.
    lister = storage.Drive(plan["list_drive"], component_name=COMPONENT, root_folder=str(base))
    for name in _names(plan["list_files"]):
        lister.put(f"small/{name}")
    lister.list("small")  # warm-up
    list_s = []
    for _ in range(plan["list_repeats"]):
        started = time.perf_counter()
        entries = lister.list("small")
        list_s.append(time.perf_counter() - started)
    if len(entries) != plan["list_files"]:
        raise RuntimeError(f"the original Drive listed {len(entries)} entries")
    return {"version": version, "put_s": put_s, "get_s": get_s, "list_s": list_s}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))), flush=True)
