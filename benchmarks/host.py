"""Reading the machine: CPU time of processes, busy time of all CPUs, RSS, what it is."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by every thread of ``pid`` (ns-precise, from schedstat)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return 0.0
    for task in tasks:
        with (
            contextlib.suppress(FileNotFoundError, ProcessLookupError),
            open(f"/proc/{pid}/task/{task}/schedstat") as f,
        ):
            total += int(f.read().split()[0])
    if total:
        return total / 1e9
    # no schedstat (some kernels): utime + stime in clock ticks
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def system_cpu() -> dict[str, float]:
    """Busy and steal seconds of all CPUs so far (/proc/stat), to spot foreign load.

    busy = user + nice + system. What is busy beyond the CPU time of the
    benchmark's own processes was used by something else on the machine and may
    have skewed a run. (irq and softirq time are left out: loopback traffic's
    own softirq work would show up there and look foreign.)
    """
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system = (int(x) for x in fields[:3])
    steal = int(fields[7]) if len(fields) > 7 else 0
    return {"busy": (user + nice + system) / tick, "steal": steal / tick}


def wait_quiet(
    ours: list[int], threshold: float = 10.0, patience: float = 60.0, sample: float = 0.5
) -> float:
    """Wait (at most ``patience`` s) until other processes use < ``threshold`` % CPU.

    Returns the last measured foreign CPU %. The machine may be shared (tests,
    builds): starting a phase while something else runs would skew it.
    """
    deadline = time.monotonic() + patience
    while True:
        before = system_cpu()["busy"] - sum(cpu_seconds(p) for p in ours)
        time.sleep(sample)
        after = system_cpu()["busy"] - sum(cpu_seconds(p) for p in ours)
        other = max(0.0, 100 * (after - before) / sample)
        if other < threshold or time.monotonic() > deadline:
            return other


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    model = platform.processor() or "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True, timeout=10
        ).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    versions: dict[str, str] = {}
    from importlib import metadata

    for name in (
        "wschat",
        "websockets",
        "picows",
        "aiofastnet",
        "uvloop",
        "anyio",
        "wsproto",
        "h11",
        "msgspec",
        "redis",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "wschat"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        if dirty:
            commit += "+dirty"
    redis_server = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=10
        ).stdout
        found = re.search(r"v=(\S+)", out)
        redis_server = found.group(1) if found else ""
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
        "redis_server": redis_server,
        "commit": commit,
    }
