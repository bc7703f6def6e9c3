"""compose.yaml: its shape, and its services' commands run as local processes.

No Docker engine runs here, so the services run as processes instead, with the environment
the file gives them (host names and volumes mapped to loopback and temporary folders).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from .conftest import REPO
from .servers import ServerProcess, wait_for


def load() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load((REPO / "compose.yaml").read_text())
    return compose


def test_compose_file_shape() -> None:
    compose = load()
    services = compose["services"]
    assert set(services) == {"valkey", "worker_1", "worker_2"}
    valkey = services["valkey"]
    assert "--appendonly" in valkey["command"] and "yes" in valkey["command"]
    assert valkey["healthcheck"]["test"][-1] == "ping"
    assert set(compose["volumes"]) == {"shared", "valkey-data"}
    for name in ("worker_1", "worker_2"):
        worker = services[name]
        # Configured only through ASYNCDRIVE_* variables.
        assert set(worker["environment"]) == {
            "ASYNCDRIVE_ROOT", "ASYNCDRIVE_REDIS_URL", "ASYNCDRIVE_COMPONENT"
        }  # fmt: skip
        assert "shared:/shared" in worker["volumes"]
        assert worker["depends_on"]["valkey"]["condition"] == "service_healthy"
    assert services["worker_2"]["depends_on"]["worker_1"] == {
        "condition": "service_completed_successfully"
    }


def test_services_run_as_local_processes(tmp_path: Path) -> None:
    compose = load()
    services = compose["services"]
    # The valkey service: its own command line, on a loopback port and a temporary folder.
    command = services["valkey"]["command"]
    assert command[0] == "valkey-server"
    (tmp_path / "valkey-data").mkdir()
    server = ServerProcess(
        tmp_path / "valkey-data", persistence=None, tcp=True, extra_args=command[1:]
    )
    port = server.port
    shared = tmp_path / "shared"
    shared.mkdir()
    try:
        server.start()
        wait_for(server.url)  # the healthcheck
        outputs = {}
        for name in ("worker_1", "worker_2"):  # the order depends_on gives
            service = services[name]
            env = {
                "PATH": "/usr/bin:/bin",
                **{
                    key: value.replace("/shared", str(shared)).replace(
                        "valkey:6379", f"127.0.0.1:{port}"
                    )
                    for key, value in service["environment"].items()
                },
            }
            shell = service["command"][-1]
            install, _, run = shell.partition(" && ")
            assert install.startswith("pip install")  # done already: this package is installed
            argv = shlex.split(run)
            assert argv[0] == "python"
            proc = subprocess.run(
                [sys.executable, "-W", "error", *argv[1:]],
                cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
            outputs[name] = proc.stdout.splitlines()
    finally:
        server.stop()
    assert outputs["worker_1"] == [
        "work_1: writes as 'root.work_1'",
        "work_1: put a.txt, then deleted the local copy",
    ]
    assert outputs["worker_2"][-1] == "work_2: first line of a.txt -> Hello World !"
    assert "work_2: drive.list('.') -> ['a.txt']" in outputs["worker_2"]
    # The file's bytes landed in the shared volume, under the writer's component.
    assert (shared / "drives" / "drive_1" / "root.work_1" / "a.txt").read_text() == "Hello World !"
