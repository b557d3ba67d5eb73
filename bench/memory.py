"""Peak resident memory of this process and every process it starts, per role and per stage.

Roles: the driver's Python process, the JVM (in local mode it is the driver and the executors),
Spark's Python workers, and the training processes that TorchDistributor starts through
torchrun. A sampler thread reads /proc a few times a second (Linux only).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

PAGE = os.sysconf("SC_PAGE_SIZE")
ROLES = ("driver_python", "jvm", "python_worker", "training_process")


def _processes() -> dict[int, tuple[int, str, int]]:
    """pid -> (parent pid, command line, resident bytes) for every readable process."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{name}/statm") as f:
                rss = int(f.read().split()[1]) * PAGE
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        found[int(name)] = (ppid, cmdline, rss)
    return found


def _is_torchrun(cmdline: str) -> bool:
    return "torch.distributed.run" in cmdline or "torchrun" in cmdline


def classify(root: int, processes: dict[int, tuple[int, str, int]]) -> dict[int, str]:
    """The role of each descendant of ``root`` (launchers such as torchrun itself excluded)."""
    roles = {}
    for pid, (_, cmdline, _) in processes.items():
        chain, cursor = [], pid
        while cursor in processes and cursor != root and len(chain) < 32:
            chain.append(cursor)
            cursor = processes[cursor][0]
        if cursor != root and pid != root:
            continue
        if pid == root:
            roles[pid] = "driver_python"
        elif _is_torchrun(cmdline):
            continue
        elif any(_is_torchrun(processes[p][1]) for p in chain[1:]):
            roles[pid] = "training_process"
        elif "java" in cmdline.split(" ", 1)[0]:
            roles[pid] = "jvm"
        elif "pyspark" in cmdline:
            roles[pid] = "python_worker"
    return roles


class PeakMemory:
    """``with memory.stage("train"): ...`` records the peak RSS of one process of each role."""

    def __init__(self, interval_s: float = 0.2):
        self.interval_s = interval_s
        self.root = os.getpid()
        self.stages: dict[str, dict[str, int]] = {}
        self._peaks: dict[str, int] = {}
        self._counts: dict[str, set] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        processes = _processes()
        roles = classify(self.root, processes)
        with self._lock:
            for pid, role in roles.items():
                self._peaks[role] = max(self._peaks.get(role, 0), processes[pid][2])
                self._counts.setdefault(role, set()).add(pid)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval_s)

    @contextlib.contextmanager
    def stage(self, name: str):
        with self._lock:
            self._peaks, self._counts = {}, {}
        try:
            yield
        finally:
            self._sample()
            with self._lock:
                self.stages[name] = {
                    **{f"{role}_peak_bytes": self._peaks.get(role, 0) for role in ROLES},
                    **{f"{role}_count": len(self._counts.get(role, ())) for role in ROLES},
                }

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
