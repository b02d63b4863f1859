"""CPU seconds the processes of each side spent, read from /proc: on a machine of few cores, what decides.

The script side is this process alone (the image farm is a separate process and counted on neither side).
The pipeline side is every process of the local stack, grouped: the five services, Triton (server and its
Python-backend stubs), Kafka and ZooKeeper (java), and Ceph (radosgw, ceph-osd, ceph-mon).
"""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SERVICES = ("fetcher", "checksummer", "detector", "embedder", "indexer")


def _group(command: list[str]) -> str | None:
    """Which part of the stack a command line belongs to, if any."""
    name = Path(command[0]).name if command else ""
    if name in ("tritonserver", "triton_python_backend_stub"):
        return "triton"
    if name in ("radosgw", "ceph-osd", "ceph-mon"):
        return "ceph"
    if name == "java" and any(".stack" in part for part in command):
        return "kafka"
    for i, part in enumerate(command[:-1]):
        if part == "-m" and command[i + 1].startswith("taxonstream."):
            service = command[i + 1].removeprefix("taxonstream.")
            return service if service in SERVICES else None
    return None


def _seconds(pid: str) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def stack_cpu() -> dict[str, float]:
    """group -> CPU seconds so far, over the stack's running processes (keyed by pid, so restarts show)."""
    totals: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = [p.decode(errors="replace") for p in (entry / "cmdline").read_bytes().split(b"\0") if p]
        except OSError:
            continue
        group = _group(command)
        if group is not None:
            totals[f"{group}:{entry.name}"] = _seconds(entry.name)
    return totals


def stack_cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """group -> CPU seconds spent between two readings (a process that started meanwhile counts whole)."""
    spent: dict[str, float] = {}
    for key, seconds in after.items():
        group = key.split(":", 1)[0]
        spent[group] = spent.get(group, 0.0) + seconds - before.get(key, 0.0)
    return spent


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system
