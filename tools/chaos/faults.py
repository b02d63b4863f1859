"""What the fault runner can kill, how it kills each (SIGKILL by pid file), brings it back, and tells it answers.

Services are started again by the stack's supervisor when it runs (else here, with `start_service`);
the broker, the S3 gateway and Triton by their tools/stack/<component>.sh `start`.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from taxonstream.core.local_stack import stack_dir
from tools.stack import local_stack as stack

SERVICES = {spec.name: spec for spec in stack.SERVICES}


@dataclass(frozen=True)
class Victim:
    name: str  # a service, or kafka | s3 | triton
    daemon: str  # its pid file under .stack/pids/
    component: str | None  # tools/stack/<component>.sh, None for a service


VICTIMS = {
    **{name: Victim(name, name, None) for name in SERVICES},
    "kafka": Victim("kafka", "kafka", "kafka"),
    "s3": Victim("s3", "radosgw", "s3"),
    "triton": Victim("triton", "triton", "triton"),
}


def pid_of(victim: Victim) -> int | None:
    """The live pid in its pid file ("PID" or the daemons' "PID STARTTIME")."""
    return stack.supervisor.read_pid(stack_dir() / "pids" / f"{victim.daemon}.pid")


# The fetcher's private networks as the stack started it (read from the process before a kill), so a
# restart done here lets it fetch from the same sites.
_allowed_networks: list[str] = []


def _fetcher_networks(pid: int) -> list[str]:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return _allowed_networks
    found = [v.split(b"=", 1)[1].decode() for v in environ if v.startswith(b"TAXONSTREAM_FETCH_ALLOW_NETWORKS=")]
    return [n for n in found[0].split(",") if n] if found else []


def kill(victim: Victim) -> int | None:
    """SIGKILL, no warning: what a crashed node looks like. The pid killed, or None if it was not running."""
    global _allowed_networks
    pid = pid_of(victim)
    if pid is not None and victim.name == "fetcher":
        _allowed_networks = _fetcher_networks(pid)
    if pid is not None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return None
    return pid


# A start can fail where a second one a few seconds later succeeds (a port or a ZooKeeper registration the
# killed process held, freed meanwhile): three tries, 3 s apart, before the restart counts as failed.
START_TRIES, START_PAUSE_S = 3, 3.0


def restart(victim: Victim) -> None:
    """Bring it back (blocking): the component's script, or a service unless the supervisor does it.

    Raises StackError when the component's script fails every try (its last output in the message)."""
    if victim.component is not None:
        for attempt in range(1, START_TRIES + 1):
            if stack._script(victim.component, "start").returncode == 0:
                return
            if attempt < START_TRIES:
                time.sleep(START_PAUSE_S)
        raise stack.StackError(f"{victim.name} did not start after {START_TRIES} tries (see .stack/logs)")
    elif stack.supervisor_pid() is None:
        stack.start_service(SERVICES[victim.name], _allowed_networks, timeout=300)


def _tcp(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def answers(victim: Victim) -> bool:
    """Whether it is back: a service SERVING, the broker and gateway answering, Triton ready."""
    if victim.name in SERVICES:
        return stack.healthy(SERVICES[victim.name].grpc_port, timeout=1)
    try:
        if victim.name == "s3":
            return httpx.get("http://127.0.0.1:27480/", timeout=1).status_code < 500
        if victim.name == "triton":
            return httpx.get("http://127.0.0.1:28000/v2/health/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
    return _tcp(29092)


def all_serving() -> bool:
    return all(stack.healthy(spec.grpc_port, timeout=1) for spec in stack.SERVICES)


def log_tail(name: str) -> str:
    path = Path(stack_dir() / "logs" / f"{name}.log")
    return stack.supervisor.last_line(path)
