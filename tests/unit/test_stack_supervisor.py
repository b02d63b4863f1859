"""The local stack's supervisor on fake children (no servers): exits recorded, restarts with backoff, a
stopped-on-purpose child left alone, a child someone else started adopted rather than doubled.

The clock is a stand-in (backoff is checked by advancing it, never by sleeping); the children are real
processes, waited for with `Popen.wait`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.stack import supervisor
from tools.stack.supervisor import BACKOFF_FIRST, BACKOFF_MAX, STABLE_SECONDS, ChildSpec, Supervisor

FAILS = [sys.executable, "-c", "import sys; print('loading the registry'); print('boom: S3 unavailable'); sys.exit(3)"]
SLEEPS = [sys.executable, "-c", "import time; print('serving', flush=True); time.sleep(600)"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _spec(tmp_path: Path, name: str, command: list[str]) -> ChildSpec:
    return ChildSpec(
        name, command, dict(os.environ), tmp_path / "logs" / f"{name}.log", tmp_path / "pids" / f"{name}.pid"
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def made(tmp_path) -> Iterator[list[Supervisor]]:
    """Supervisors of a test; their children still running are killed after it."""
    supervisors: list[Supervisor] = []
    yield supervisors
    for sup in supervisors:
        for child in sup.children.values():
            if child.process is not None and child.process.poll() is None:
                child.process.kill()
                child.process.wait()


def _supervisor(made, tmp_path, clock, *specs: ChildSpec) -> Supervisor:
    sup = Supervisor(specs, tmp_path / "supervisor.json", clock=clock)
    made.append(sup)
    return sup


def _wait_exit(sup: Supervisor, name: str) -> int:
    process = sup.children[name].process
    assert process is not None, f"{name} was not started"
    return process.wait(timeout=60)


def test_an_exited_child_is_recorded_and_restarted_after_a_doubling_backoff(made, tmp_path, clock):
    sup = _supervisor(made, tmp_path, clock, _spec(tmp_path, "checksummer", FAILS))
    sup.tick()
    first_pid = sup.children["checksummer"].state.pid
    assert first_pid is not None and supervisor.read_pid(tmp_path / "pids" / "checksummer.pid") in {first_pid, None}

    waits = []
    for restart in range(1, 8):
        assert _wait_exit(sup, "checksummer") == 3
        sup.tick()  # sees the exit
        state = sup.children["checksummer"].state
        assert state.pid is None and state.last_exit == "exit code 3"
        assert state.last_log_line == "boom: S3 unavailable"
        waits.append(state.next_start_at - clock.now)
        clock.now = state.next_start_at - 0.01
        sup.tick()
        assert sup.children["checksummer"].state.pid is None, "restarted before its backoff"
        clock.now = state.next_start_at
        sup.tick()
        assert state.pid is not None and state.restarts == restart
    assert waits == [min(BACKOFF_MAX, BACKOFF_FIRST * 2**i) for i in range(7)]
    assert waits[-1] == BACKOFF_MAX

    shown = supervisor.read_state(tmp_path / "supervisor.json")["checksummer"]
    assert shown["restarts"] == 7 and shown["last_exit"] == "exit code 3"


def test_a_killed_child_is_named_by_its_signal_and_a_stable_run_resets_the_backoff(made, tmp_path, clock):
    sup = _supervisor(made, tmp_path, clock, _spec(tmp_path, "embedder", SLEEPS))
    sup.tick()
    for _ in range(3):  # three quick deaths: the backoff grows to 8 s
        os.kill(sup.children["embedder"].state.pid, signal.SIGKILL)
        _wait_exit(sup, "embedder")
        sup.tick()
        clock.now = sup.children["embedder"].state.next_start_at
        sup.tick()
    assert sup.children["embedder"].backoff == 8 * BACKOFF_FIRST

    clock.now += STABLE_SECONDS  # then it runs a minute
    sup.tick()
    os.kill(sup.children["embedder"].state.pid, signal.SIGKILL)
    _wait_exit(sup, "embedder")
    sup.tick()
    state = sup.children["embedder"].state
    assert state.last_exit == "killed by SIGKILL"  # (its log may be empty: killed before it printed)
    assert state.next_start_at - clock.now == BACKOFF_FIRST


def test_a_child_stopped_on_purpose_stays_stopped_until_the_hold_is_lifted(made, tmp_path, clock):
    spec = _spec(tmp_path, "fetcher", SLEEPS)
    sup = _supervisor(made, tmp_path, clock, spec)
    sup.tick()
    supervisor.hold_marker(spec.pid_file).touch()  # what stop_service does before its SIGTERM
    os.kill(sup.children["fetcher"].state.pid, signal.SIGTERM)
    _wait_exit(sup, "fetcher")
    for _ in range(3):
        clock.now += BACKOFF_MAX
        sup.tick()
    state = sup.children["fetcher"].state
    assert state.pid is None and state.held and state.last_exit == "killed by SIGTERM"
    supervisor.hold_marker(spec.pid_file).unlink()
    sup.tick()
    sup.tick()
    assert state.pid is not None and not state.held


def test_a_child_someone_else_started_is_adopted_not_doubled(made, tmp_path, clock):
    spec = _spec(tmp_path, "indexer", SLEEPS)
    spec.pid_file.parent.mkdir(parents=True)
    outside = subprocess.Popen(SLEEPS, stdout=subprocess.DEVNULL)  # start_service's process, not the supervisor's
    try:
        spec.pid_file.write_text(f"{outside.pid}\n")
        sup = _supervisor(made, tmp_path, clock, spec)
        sup.tick()
        child = sup.children["indexer"]
        assert child.state.pid == outside.pid and child.process is None
        outside.kill()
        outside.wait()
        sup.tick()
        assert child.state.last_exit.startswith("exited (started outside the supervisor")
        clock.now = child.state.next_start_at
        sup.tick()
        assert child.process is not None and child.state.pid == child.process.pid != outside.pid
        assert supervisor.read_pid(spec.pid_file) == child.process.pid
    finally:
        if outside.poll() is None:
            outside.kill()
            outside.wait()


@pytest.mark.parametrize(
    ("returncode", "said"),
    [(0, "exit code 0"), (1, "exit code 1"), (-9, "killed by SIGKILL"), (-15, "killed by SIGTERM"), (None, "exited")],
)
def test_exit_descriptions(returncode, said):
    assert supervisor.describe_exit(returncode).startswith(said)


def test_status_note_shows_restarts_and_the_last_exit():
    from tools.stack.local_stack import _supervision_note

    assert _supervision_note({}) == ""
    note = _supervision_note(
        {"restarts": 2, "last_exit": "exit code 3", "last_exit_at": 0.0, "last_log_line": "boom", "held": False}
    )
    assert note.startswith("  restarts 2, last exit ") and note.endswith("exit code 3 — boom")
