"""Keeps the local stack's services running: a process that exits is started again, with backoff.

`taxonstream stack up` starts one supervisor process (pid file `pids/supervisor.pid`), which starts
each service and watches it. A service that exits is logged with its exit code or signal and its last
log line, and started again after a backoff (1 s, doubling to 30 s; back to 1 s once it has run 60 s).
`stack status` reads the restarts and last exit from `supervisor.json`.

Two things keep the supervisor and a direct `start_service` (the tests') from both starting a service:
one lock file per service taken around "is it running? then start it", and a hold marker that
`stop_service` leaves, so a service stopped on purpose stays stopped until someone starts it again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger("taxonstream.stack.supervisor")

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
# A process that ran this long is healthy again: its next exit restarts after BACKOFF_FIRST.
STABLE_SECONDS = 60.0


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in {"Z", "X"}  # a zombie has exited; the init process reaps it late


def read_pid(pid_file: Path) -> int | None:
    """The pid in `pid_file` if that process still runs."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    return pid if alive(pid) else None


def hold_marker(pid_file: Path) -> Path:
    return pid_file.with_suffix(".held")


@contextlib.contextmanager
def start_lock(pid_file: Path) -> Iterator[None]:
    """Held around "is it running? then start it", by the supervisor and by `start_service` alike."""
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with open(pid_file.with_suffix(".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def last_line(log_file: Path, max_bytes: int = 8192) -> str:
    """The last non-empty line of a log (its tail only is read)."""
    try:
        with open(log_file, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - max_bytes))
            lines = [line for line in handle.read().decode(errors="replace").splitlines() if line.strip()]
    except FileNotFoundError:
        return ""
    return lines[-1][:300] if lines else ""


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "exited (started outside the supervisor: status unknown)"
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
        return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


@dataclass(frozen=True)
class ChildSpec:
    name: str
    command: Sequence[str]
    env: dict[str, str]
    log_file: Path
    pid_file: Path
    cwd: Path | None = None


def launch(spec: ChildSpec) -> subprocess.Popen:
    """Start the process detached (its own session), output appended to its log, pid file written."""
    spec.log_file.parent.mkdir(parents=True, exist_ok=True)
    spec.pid_file.parent.mkdir(parents=True, exist_ok=True)
    with open(spec.log_file, "ab") as output:
        process = subprocess.Popen(
            list(spec.command),
            env=spec.env,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives whoever started it; stopped later by its pid
            cwd=spec.cwd,
        )
    spec.pid_file.write_text(f"{process.pid}\n")
    return process


@dataclass
class ChildState:
    """What `stack status` shows per service."""

    pid: int | None = None
    restarts: int = 0
    last_exit: str = ""
    last_exit_at: float | None = None
    last_log_line: str = ""
    next_start_at: float | None = None
    held: bool = False


@dataclass
class _Watched:
    spec: ChildSpec
    state: ChildState = field(default_factory=ChildState)
    process: subprocess.Popen | None = None  # ours; None with state.pid set: adopted from a pid file
    started_at: float = 0.0
    backoff: float = BACKOFF_FIRST
    ever_started: bool = False


class Supervisor:
    """One `tick` looks at every child once: records exits, schedules and makes restarts."""

    def __init__(
        self, specs: Sequence[ChildSpec], state_file: Path, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.children = {spec.name: _Watched(spec) for spec in specs}
        self.state_file = state_file
        self.clock = clock

    def tick(self) -> None:
        changed = False
        for child in self.children.values():
            changed |= self._check(child)
        if changed:
            self.write_state()

    def _check(self, child: _Watched) -> bool:
        spec, state, now = child.spec, child.state, self.clock()
        held = hold_marker(spec.pid_file).exists()
        if held != state.held:
            state.held = held
            return True
        if state.pid is not None and not self._running(child):
            self._exited(child, now)
            return True
        if state.pid is not None or held:
            if state.pid is not None and now - child.started_at >= STABLE_SECONDS:
                child.backoff = BACKOFF_FIRST
            return False
        if state.next_start_at is not None and now < state.next_start_at:
            return False
        with start_lock(spec.pid_file):
            if hold_marker(spec.pid_file).exists():
                return False
            if (pid := read_pid(spec.pid_file)) is not None:  # started by someone else: watch it
                child.process, state.pid = None, pid
            else:
                child.process = launch(spec)
                state.pid = child.process.pid
                if child.ever_started:
                    state.restarts += 1
                    log.warning("restarted %s (restart %d, pid %d)", spec.name, state.restarts, state.pid)
                child.ever_started = True
        child.started_at, state.next_start_at = now, None
        return True

    def _running(self, child: _Watched) -> bool:
        if child.process is not None:
            return child.process.poll() is None
        return child.state.pid is not None and alive(child.state.pid)

    def _exited(self, child: _Watched, now: float) -> None:
        spec, state = child.spec, child.state
        returncode = child.process.returncode if child.process is not None else None
        state.last_exit, state.last_exit_at = describe_exit(returncode), time.time()
        state.last_log_line = last_line(spec.log_file)
        state.pid, child.process = None, None
        child.ever_started = True
        if now - child.started_at >= STABLE_SECONDS:
            child.backoff = BACKOFF_FIRST
        state.next_start_at = now + child.backoff
        if hold_marker(spec.pid_file).exists():
            log.info("%s stopped on purpose (%s); not restarting it", spec.name, state.last_exit)
            return
        log.warning(
            "%s %s; starting it again in %.0f s; its log ended: %s",
            spec.name,
            state.last_exit,
            child.backoff,
            state.last_log_line,
        )
        child.backoff = min(BACKOFF_MAX, child.backoff * 2)

    def write_state(self) -> None:
        states = {name: asdict(child.state) for name, child in self.children.items()}
        partial = self.state_file.with_suffix(".tmp")
        partial.write_text(json.dumps({"supervisor_pid": os.getpid(), "services": states}, indent=1))
        partial.replace(self.state_file)

    def run(self, stop: threading.Event, interval: float = 0.5) -> None:
        log.info("supervising %s", ", ".join(self.children))
        while not stop.is_set():
            self.tick()
            stop.wait(interval)
        log.info("supervisor stopped (the services keep running)")


def read_state(state_file: Path) -> dict[str, dict]:
    """Per service, what the supervisor last wrote (empty when it never ran)."""
    try:
        return json.loads(state_file.read_text()).get("services", {})
    except (FileNotFoundError, ValueError):
        return {}
