"""SIGTERM drains: the service finishes its batch, commits, says so, and its replacement loses nothing."""

from __future__ import annotations

import json

from pipeline_helpers import outcomes, submit, unique_job, wait_done, wait_indexed

from tools.stack import local_stack as stack

SPECS = {s.name: s for s in stack.SERVICES}


def log_events(name: str) -> list[dict]:
    events = []
    for line in (stack.stack_dir() / "logs" / f"{name}.log").read_text(errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line a library printed outside our logger
    return events


def test_sigterm_drains_the_checksummer_and_the_job_still_completes(fetcher, site):
    images = site.images(60)
    job = unique_job("drain")
    submit(fetcher, job, [site.url("img", image) for image in images])
    wait_indexed(fetcher, job, 5)

    before = len(log_events("checksummer"))
    stack.stop_service("checksummer")  # SIGTERM, by pid
    after = [e["msg"] for e in log_events("checksummer")[before:]]
    assert "draining" in after and "worker stopped" in after and after[-1] == "stopped", after
    stack.start_service(SPECS["checksummer"])

    status = wait_done(fetcher, job)
    assert (status.indexed, status.duplicate, status.failed) == (60, 0, 0)
    assert sorted(outcomes(fetcher, job)) == list(range(60))
