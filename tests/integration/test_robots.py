"""With robots.txt respected (a setting), the streaming fetcher skips what a provider disallows."""

from __future__ import annotations

import os

import pytest
from pipeline_helpers import outcomes, submit, unique_job, wait_done

from taxonstream.v1.messages_pb2 import Outcome
from tools.stack import local_stack as stack

FETCHER = next(s for s in stack.SERVICES if s.name == "fetcher")


@pytest.fixture
def fetcher_respecting_robots(local_stack):
    """The stack's fetcher restarted with TAXONSTREAM_FETCH_ROBOTS_TXT=true, and back to the default after."""
    os.environ["TAXONSTREAM_FETCH_ROBOTS_TXT"] = "true"
    try:
        stack.stop_service("fetcher")
        stack.start_service(FETCHER, ["127.0.0.0/8"])
        yield
    finally:
        del os.environ["TAXONSTREAM_FETCH_ROBOTS_TXT"]
        stack.stop_service("fetcher")
        stack.start_service(FETCHER, ["127.0.0.0/8"])


def test_disallowed_paths_are_not_fetched(fetcher_respecting_robots, fetcher, site):
    allowed, disallowed = site.images(2)
    private_path = f"/private/{disallowed.relative_to(site.directory).as_posix()}"
    job = unique_job("robots")
    submit(fetcher, job, [site.url("img", allowed), site.url("private", disallowed)])
    wait_done(fetcher, job, timeout=300)
    ended = outcomes(fetcher, job)
    assert ended[0].state == Outcome.INDEXED
    assert (ended[1].state, ended[1].reason) == (Outcome.FAILED, "robots_disallowed")
    assert site.requests[private_path] == 0, "a disallowed URL is never requested"
    assert site.requests["/robots.txt"] >= 1
