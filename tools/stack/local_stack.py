"""The local stack: the real servers and the five services as local processes (`taxonstream stack up|down|status`).

Kafka, Ceph S3 and Triton are installed and run by the scripts in tools/stack/ (each: install,
start, stop, status); this module orders them, writes Triton's model repository, and runs the
services on loopback with their logs and pid files in the same folder (`.stack/` by default).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from taxonstream.core.local_stack import REPO, model_repository, s3_env, stack_dir
from taxonstream.core.settings import PORTAL_HTTP_PORT, SERVICE_PORTS

try:
    from tools.stack import supervisor
except ImportError:  # run as a script: tools/stack is sys.path[0]
    import supervisor  # type: ignore[no-redef]

SCRIPTS = REPO / "tools" / "stack"
COMPONENTS = ("kafka", "s3", "triton")


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    grpc_port: int
    metrics_port: int


# In start order; the ports are the services' own defaults, so the CLI and tests find them unconfigured.
SERVICES = tuple(ServiceSpec(name, ports.grpc, ports.metrics) for name, ports in SERVICE_PORTS.items())
# The explorer: HTTP (pages, /healthz, /metrics on one port), started after the five it calls; not in SERVICES,
# whose entries all answer gRPC health.
PORTAL = ServiceSpec("portal", PORTAL_HTTP_PORT, PORTAL_HTTP_PORT)
SUPERVISED = (*SERVICES, PORTAL)


class StackError(RuntimeError):
    pass


def _script(component: str, verb: str) -> subprocess.CompletedProcess[str]:
    script = SCRIPTS / f"{component}.sh"
    if not script.exists():
        raise StackError(f"{script} not found: the local stack runs from a checkout of the repository")
    env = {**os.environ, "TAXONSTREAM_PYTHON": sys.executable, "TAXONSTREAM_MODEL_REPOSITORY": str(model_repository())}
    return subprocess.run(["bash", str(script), verb], env=env, text=True, capture_output=verb == "status")


def _pid_file(name: str) -> Path:
    return stack_dir() / "pids" / f"{name}.pid"


def service_pid(name: str) -> int | None:
    """The pid of a service this stack started, if that process still runs."""
    return supervisor.read_pid(_pid_file(name))


_alive = supervisor.alive
SUPERVISOR = "supervisor"


def supervisor_pid() -> int | None:
    """The pid of the running supervisor (`stack up` starts it), if any."""
    return service_pid(SUPERVISOR)


def _state_file() -> Path:
    return stack_dir() / "supervisor.json"


def healthy(port: int, timeout: float = 2.0) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
    return answer.status == health_pb2.HealthCheckResponse.SERVING


def portal_ready(port: int = PORTAL_HTTP_PORT, timeout: float = 2.0) -> bool:
    """The portal answers its /healthz (it has no gRPC health service)."""
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def ready(spec: ServiceSpec) -> bool:
    return portal_ready(spec.grpc_port) if spec.name == PORTAL.name else healthy(spec.grpc_port)


def _allowed_file() -> Path:
    return stack_dir() / "fetch-allow-networks"


def allowed_networks() -> list[str]:
    """The private networks `stack up` let the fetcher fetch from (none if it was not given any)."""
    path = _allowed_file()
    return [n.strip() for n in path.read_text().split(",") if n.strip()] if path.exists() else []


def child_spec(spec: ServiceSpec, allow_networks: Iterable[str] | None = None) -> supervisor.ChildSpec:
    """How one service is started: its command, environment (this process's), log and pid file.

    allow_networks None: the fetcher keeps those `stack up` was given (a restart by hand or by a test must
    not silently drop the allow-list and fail every loopback URL as `blocked_address`)."""
    if allow_networks is None:
        allow_networks = allowed_networks()
    env = {
        **os.environ,
        **s3_env(),
        "TAXONSTREAM_GRPC_PORT": str(spec.grpc_port),
        "TAXONSTREAM_METRICS_PORT": str(spec.metrics_port),
        "PYTHONUNBUFFERED": "1",
    }
    if spec.name == "fetcher":
        env["TAXONSTREAM_FETCH_ALLOW_NETWORKS"] = ",".join(allow_networks)
    if spec.name == PORTAL.name:
        env["TAXONSTREAM_PORTAL_PORT"] = str(spec.grpc_port)
    return supervisor.ChildSpec(
        spec.name,
        [sys.executable, "-m", f"taxonstream.{spec.name}"],
        env,
        stack_dir() / "logs" / f"{spec.name}.log",
        _pid_file(spec.name),
        cwd=REPO,
    )


def start_service(spec: ServiceSpec, allow_networks: Iterable[str] | None = None, timeout: float = 120.0) -> int:
    """Start one service unless it runs; waits until its health check says SERVING.

    With the supervisor running, a service that was not stopped on purpose (a crashed or killed one) is
    the supervisor's to start: this only waits for it, whichever of the two starts the process.
    """
    pid_file = _pid_file(spec.name)
    with supervisor.start_lock(pid_file):
        held = supervisor.hold_marker(pid_file)
        # A supervisor from before this service existed does not watch it: then this starts it.
        unwatched = supervisor_pid() is None or spec.name not in supervisor.read_state(_state_file())
        if service_pid(spec.name) is None and (held.exists() or unwatched):
            supervisor.launch(child_spec(spec, allow_networks))
        held.unlink(missing_ok=True)
    deadline = time.monotonic() + timeout
    while not ready(spec):
        if service_pid(spec.name) is None and supervisor_pid() is None:
            raise StackError(f"{spec.name} exited during start; its log ends:\n{_tail(spec.name)}")
        if time.monotonic() > deadline:
            raise StackError(f"{spec.name} not healthy after {timeout:.0f} s; its log ends:\n{_tail(spec.name)}")
        time.sleep(0.3)
    pid = service_pid(spec.name)
    if pid is None:
        raise StackError(f"{spec.name} answered health but has no live pid file ({pid_file})")
    return pid


def stop_service(name: str, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0, hold: bool = True) -> None:
    """Stop a service this stack started (by its pid file only); SIGKILL if it outstays `timeout`.

    `hold`: the supervisor leaves it stopped until `start_service` (a kill without hold is a crash: restarted).
    """
    if hold:
        _pid_file(name).parent.mkdir(parents=True, exist_ok=True)
        supervisor.hold_marker(_pid_file(name)).touch()
    pid = service_pid(name)
    if pid is not None:
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while _alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 5
            time.sleep(0.1)
    with contextlib.suppress(FileNotFoundError):
        _pid_file(name).unlink()


def kill_service(name: str) -> None:
    """SIGKILL, no drain: what a crashed pod looks like (used by the crash tests); the supervisor restarts it."""
    stop_service(name, signal.SIGKILL, timeout=10, hold=False)


def _tail(name: str, lines: int = 30) -> str:
    path = stack_dir() / "logs" / f"{name}.log"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def ensure_models() -> bool:
    """Write the model repository if its recipe changed (and fetch the tokenizer vocabulary once).

    True when the repository was rewritten: a Triton already running then reloads its models.
    """
    from taxonstream.models.repository import ensure_repository, read_manifest
    from taxonstream.models.tokenizer import ensure_vocab

    ensure_vocab()
    before = (read_manifest(model_repository()) or {}).get("content_hash")
    ensure_repository(model_repository(), target="local")
    return (read_manifest(model_repository()) or {}).get("content_hash") != before


def reload_triton_models() -> None:
    """Load every model of the repository again (Triton runs with explicit model control)."""
    import httpx

    from taxonstream.models.repository import read_manifest

    for entry in (read_manifest(model_repository()) or {}).get("models", []):
        answer = httpx.post(f"http://127.0.0.1:28000/v2/repository/models/{entry['name']}/load", timeout=300)
        if answer.status_code != 200:
            raise StackError(f"triton could not load {entry['name']}: {answer.text[:500]}")


def up(allow_networks: Iterable[str] = (), services: bool = True, echo=print) -> None:
    for component in ("kafka", "s3"):
        echo(f"starting {component} …")
        if _script(component, "start").returncode != 0:
            raise StackError(f"{component} did not start (see {stack_dir() / 'logs'})")
    echo("writing the model repository …")
    changed = ensure_models()
    echo("starting triton …")
    if _script("triton", "start").returncode != 0:
        raise StackError(f"triton did not start (see {stack_dir() / 'logs'})")
    if changed:  # a Triton that was already running still serves the old files until it loads them again
        echo("loading the changed models into triton …")
        reload_triton_models()
    if services:
        allow = list(allow_networks)
        _allowed_file().parent.mkdir(parents=True, exist_ok=True)
        _allowed_file().write_text(",".join(allow))
        start_supervisor(allow, echo)
        for spec in SUPERVISED:
            echo(f"starting {spec.name} …")
            start_service(spec, allow)
        echo(f"the explorer: http://127.0.0.1:{PORTAL.grpc_port}/")


def start_supervisor(allow_networks: list[str], echo=print) -> None:
    """The process that keeps the services running (this script's `supervise`); the services' holds cleared."""
    for spec in SUPERVISED:
        supervisor.hold_marker(_pid_file(spec.name)).unlink(missing_ok=True)
    if supervisor_pid() is not None:
        return
    echo("starting the supervisor …")
    flags = [arg for cidr in allow_networks for arg in ("--allow-network", cidr)]
    command = [sys.executable, str(Path(__file__).resolve()), "supervise", *flags]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    logs = stack_dir() / "logs" / f"{SUPERVISOR}.log"
    supervisor.launch(supervisor.ChildSpec(SUPERVISOR, command, env, logs, _pid_file(SUPERVISOR), cwd=REPO))


def supervise(allow_networks: list[str]) -> int:
    """Runs in the supervisor process until SIGTERM; the services it started keep running after it."""
    import logging
    import threading

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    specs = [child_spec(spec, allow_networks) for spec in SUPERVISED]
    supervisor.Supervisor(specs, _state_file()).run(stop)
    return 0


def down(echo=print) -> None:
    if supervisor_pid() is not None:  # first, or it would start again what is stopped next
        echo("stopping the supervisor …")
        stop_service(SUPERVISOR, hold=False)
    for spec in reversed(SUPERVISED):
        if service_pid(spec.name) is not None:
            echo(f"stopping {spec.name} …")
        stop_service(spec.name)
    for component in reversed(COMPONENTS):
        echo(f"stopping {component} …")
        _script(component, "stop")


def status() -> tuple[list[str], bool]:
    lines, ok = [], True
    for component in COMPONENTS:
        result = _script(component, "status")
        lines.extend(line for line in result.stdout.splitlines() if line.strip())
        ok &= result.returncode == 0
    watching = supervisor_pid()
    lines.append(
        (f"{SUPERVISOR:<12}{'up' if watching else 'down':<6}" + (f"pid {watching}" if watching else "")).rstrip()
    )
    supervised = supervisor.read_state(_state_file())
    for spec in SERVICES:
        up_now = service_pid(spec.name) is not None and healthy(spec.grpc_port)
        ok &= up_now
        state = "up" if up_now else "down"
        line = f"{spec.name:<12}{state:<6}127.0.0.1:{spec.grpc_port} (metrics :{spec.metrics_port})"
        lines.append(line + _supervision_note(supervised.get(spec.name, {})))
    # Shown, not required: a stack started before the portal existed still counts as up (the test fixture
    # stops at its end a stack it did not find up), and `stack up` starts a missing portal either way.
    portal_up = service_pid(PORTAL.name) is not None and portal_ready(PORTAL.grpc_port)
    line = f"{PORTAL.name:<12}{'up' if portal_up else 'down':<6}http://127.0.0.1:{PORTAL.grpc_port}/ (the explorer)"
    lines.append(line + _supervision_note(supervised.get(PORTAL.name, {})))
    return lines, ok


def _supervision_note(state: dict) -> str:
    """Restarts and the last exit, as the supervisor recorded them."""
    if not state.get("restarts") and not state.get("last_exit"):
        return ""
    note = f"  restarts {state.get('restarts', 0)}"
    if state.get("last_exit"):
        at = time.strftime("%H:%M:%S", time.localtime(state["last_exit_at"])) if state.get("last_exit_at") else "?"
        note += f", last exit {at}: {state['last_exit']}"
        if state.get("last_log_line"):
            note += f" — {state['last_log_line'][:160]}"
    if state.get("held"):
        note += " (stopped on purpose)"
    return note


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="taxonstream stack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # `supervise` is the supervisor process itself, started by `up`.
    p.add_argument("action", choices=["up", "down", "status", "supervise"])
    p.add_argument(
        "--allow-network",
        action="append",
        default=[],
        metavar="CIDR",
        help="let the fetcher download from this private/loopback network (repeatable), e.g. 127.0.0.0/8 "
        "for a list served on this machine; by default only public addresses are fetched",
    )
    p.add_argument("--no-services", action="store_true", help="start only Kafka, S3 and Triton")
    p.add_argument(
        "--landcover-raster",
        metavar="PATH",
        help="a CDL GeoTIFF: the indexer adds LatLonCover's land-cover shares to records with coordinates "
        "(sets TAXONSTREAM_LANDCOVER_RASTER for the services it starts; running ones keep their settings)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.landcover_raster:
        raster = Path(args.landcover_raster).resolve()
        if not raster.is_file():
            print(f"stack: --landcover-raster {raster}: no such file", file=sys.stderr)
            return 2
        # The services (and the supervisor, which restarts them) take this process's environment.
        os.environ["TAXONSTREAM_LANDCOVER_RASTER"] = str(raster)
    try:
        if args.action == "supervise":
            return supervise(args.allow_network)
        if args.action == "up":
            up(args.allow_network, services=not args.no_services)
            print("stack is up")
            for line in status()[0]:
                print(" ", line)
            return 0
        if args.action == "down":
            down()
            print("stack is down (data kept in", stack_dir(), ")")
            return 0
        lines, ok = status()
        print("\n".join(lines))
        return 0 if ok else 1
    except StackError as error:
        print(f"taxonstream stack: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
