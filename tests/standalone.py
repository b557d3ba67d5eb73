"""A Spark standalone master and worker on this machine, and the library packed for them.

The worker's executors run Python from an environment unpacked from ``--archives``, the way Spark
documents shipping native dependencies. Packing the whole stack (PyPI's CUDA torch) would take
gigabytes and minutes, so the test's environment is thin: the ``ulr_spark`` wheel, plus one
``.pth`` line that stands for the third-party stack installed on the node image (here: this
project's ``.venv``). The project's source tree is not importable from it.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tarfile
import time
import urllib.request
from dataclasses import dataclass
from typing import Optional

import pyspark

SPARK_HOME = os.path.dirname(pyspark.__file__)
ARCHIVE_ALIAS = "environment"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_wheel(project_dir: str, out_dir: str) -> str:
    """``pip wheel`` of the project, as ``make dist`` builds it. setuptools stages files in the
    project's ``build/``, where a deleted module would linger into the wheel: it starts empty."""
    shutil.rmtree(os.path.join(project_dir, "build"), ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", out_dir, project_dir],
        check=True,
        cwd=out_dir,
    )
    shutil.rmtree(os.path.join(project_dir, "build"), ignore_errors=True)
    (wheel,) = glob.glob(os.path.join(out_dir, "ulr_spark-*.whl"))
    return wheel


def thin_environment(wheel: str, env_dir: str) -> str:
    """A venv holding the wheel, whose site-packages also sees the installed stack; returns its
    python. Packed with :func:`pack`, it is what ``--archives`` ships."""
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", "--without-pip", env_dir], check=True)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site_packages = os.path.join(env_dir, "lib", version, "site-packages")
    with open(os.path.join(site_packages, "node_stack.pth"), "w") as handle:
        handle.write(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site_packages, wheel], check=True
    )
    return os.path.join(env_dir, "bin", "python")


def pack(env_dir: str, archive: str) -> str:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(env_dir, arcname=".")
    return archive


def clean_environ() -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH into the source tree, no pytest's Spark."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "PYTHONPATH", "SPARK_"))}
    env.update(SPARK_HOME=SPARK_HOME, SPARK_LOCAL_IP="127.0.0.1")
    return env


@dataclass
class StandaloneCluster:
    """``spark-class`` Master and Worker processes; stopped as whole process groups."""

    work_dir: str
    cores: int = 2
    memory: str = "6g"
    master_url: str = ""
    master_ui: str = ""
    _processes: Optional[list] = None

    def __enter__(self) -> StandaloneCluster:
        os.makedirs(self.work_dir, exist_ok=True)
        port, ui_port = free_port(), free_port()
        self.master_url, self.master_ui = f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{ui_port}"
        self._processes = []
        self._start("master", "org.apache.spark.deploy.master.Master",
                     "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui_port))
        self._wait(lambda state: True, "the master to answer")
        self._start("worker", "org.apache.spark.deploy.worker.Worker", self.master_url,
                    "--host", "127.0.0.1", "--cores", str(self.cores), "--memory", self.memory,
                    "--webui-port", str(free_port()), "--work-dir", os.path.join(self.work_dir, "worker"))
        self._wait(lambda state: state.get("aliveworkers", 0) >= 1, "a worker to register")
        return self

    def __exit__(self, *exc) -> None:
        for process in reversed(self._processes or []):
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(process.pid, signal.SIGKILL)

    def _start(self, name: str, main_class: str, *args: str) -> None:
        log = open(os.path.join(self.work_dir, f"{name}.log"), "w")
        self._processes.append(
            subprocess.Popen(
                [os.path.join(SPARK_HOME, "bin", "spark-class"), main_class, *args],
                stdout=log, stderr=subprocess.STDOUT, env=clean_environ(), start_new_session=True,
            )
        )

    def state(self) -> dict:
        with urllib.request.urlopen(self.master_ui + "/json/", timeout=5) as response:
            return json.load(response)

    def _wait(self, ready, what: str, timeout: float = 90) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if ready(self.state()):
                    return
            except OSError:
                pass
            time.sleep(1)
        raise RuntimeError(f"timed out waiting for {what}; logs in {self.work_dir}")

    def executor_dirs(self) -> list[str]:
        return glob.glob(os.path.join(self.work_dir, "worker", "app-*", "*"))
