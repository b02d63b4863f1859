"""The servers underneath fail, the services do not: the Kafka broker or the S3 gateway SIGKILLed mid-job and
started again (their tools/stack script's `start`, as tools/chaos does), and a service started while S3 is down.

"Stays up" is read from the pid files: every service's process before the fault is the one running after it
(the supervisor would restart an exited one, which would hide an exit behind a healthy port). "Mid-job" is
measured: the job had ended some records, not all, when the dependency was killed.
"""

from __future__ import annotations

import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pipeline_helpers import assert_each_record_ended_once, outcomes, submit, unique_job, wait_done, wait_until

from taxonstream.v1 import fetcher_pb2, indexer_pb2
from taxonstream.v1.messages_pb2 import Outcome
from tools.chaos import faults
from tools.stack import local_stack as stack

SPECS = {s.name: s for s in stack.SERVICES}
IMAGES = 60


def health(port: int) -> int | None:
    """The service's health status, or None when nothing answers on its port."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status
        except grpc.RpcError:
            return None


def ended(fetcher, job: str) -> int:
    try:
        status = fetcher.GetJob(fetcher_pb2.GetJobRequest(job_id=job), timeout=10)
    except grpc.RpcError:
        return -1  # the fetcher cannot answer just now (its own dependency is down): not an exit
    return status.indexed + status.duplicate + status.failed


@pytest.mark.parametrize("victim", ["kafka", "s3"])
def test_a_dependency_killed_mid_job_takes_no_service_down(fetcher, indexer, bus, site, victim):
    running = {name: stack.service_pid(name) for name in SPECS}
    assert None not in running.values(), f"a service is not running before the fault: {running}"
    start = bus.end_offsets(bus.topics.outcomes)
    job = unique_job(f"outage-{victim}")
    submit(fetcher, job, [site.url("img", image) for image in site.images(IMAGES)])
    wait_until(lambda: ended(fetcher, job) >= 5, "the job flowing end to end", timeout=300)

    target = faults.VICTIMS[victim]
    try:
        assert faults.kill(target) is not None, f"{victim} was not running"
        at_kill = ended(fetcher, job)
        wait_until(lambda: faults.pid_of(target) is None, f"{victim} gone")
    finally:
        faults.restart(target)
    assert at_kill < IMAGES, "the job was through before the fault: nothing was in flight"

    status = wait_done(fetcher, job, timeout=600)
    assert (status.total, status.indexed, status.failed) == (IMAGES, IMAGES, 0), dict(status.failed_by_reason)
    after = {name: stack.service_pid(name) for name in SPECS}
    assert after == running, f"a service exited during the {victim} outage (pids before {running}, after {after})"
    wait_until(lambda: faults.all_serving(), "every service SERVING again")

    final, _ = assert_each_record_ended_once(bus, job, start, IMAGES)
    assert {state for state, *_ in final.values()} == {Outcome.INDEXED}
    indexed_ids = {o.image_id for o in outcomes(fetcher, job).values()}
    listed = {i.image_id for i in indexer.ListImages(indexer_pb2.ListImagesRequest(job_id=job), timeout=60)}
    assert listed == indexed_ids and len(listed) == IMAGES


def test_a_service_started_while_s3_is_down_serves_once_it_is_back(local_stack):
    # The checksummer: its start restores the duplicate registry from S3 (what made it exit before issue 13).
    spec = SPECS["checksummer"]
    gateway = faults.VICTIMS["s3"]
    stack.stop_service(spec.name)  # held: the supervisor leaves it to start_service below
    started: dict[str, object] = {}
    try:
        assert faults.kill(gateway) is not None, "the S3 gateway was not running"
        wait_until(lambda: faults.pid_of(gateway) is None, "the S3 gateway gone")

        def start() -> None:
            try:
                started["pid"] = stack.start_service(spec, timeout=300)  # returns once SERVING
            except stack.StackError as error:
                started["error"] = error

        starter = threading.Thread(target=start, daemon=True)
        starter.start()
        # Up and answering, but not serving: it waits for S3 instead of exiting.
        wait_until(lambda: health(spec.grpc_port) == health_pb2.HealthCheckResponse.NOT_SERVING, "NOT_SERVING")
        waiting_pid = stack.service_pid(spec.name)
        assert waiting_pid is not None and "pid" not in started
    finally:
        faults.restart(gateway)
    starter.join(timeout=300)
    assert "error" not in started, started.get("error")
    assert started.get("pid") == waiting_pid, "the process that waited is the one that serves (no restart)"
    assert health(spec.grpc_port) == health_pb2.HealthCheckResponse.SERVING
