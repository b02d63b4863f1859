"""A provider that rate-limits with 429 still gives every image: the fetcher slows to what it allows."""

from __future__ import annotations

import httpx
from pipeline_helpers import outcomes, submit, unique_job, wait_done

from taxonstream.v1.messages_pb2 import Outcome
from tools.stack import local_stack as stack


def test_a_rate_limited_provider_loses_no_image(fetcher, site):
    images = site.images(24)
    answered_429 = site.requests["429"]
    job = unique_job("limited")
    submit(fetcher, job, [site.url("limited", p) for p in images])
    status = wait_done(fetcher, job, timeout=300)
    assert (status.indexed, status.failed) == (24, 0), dict(status.failed_by_reason)
    assert [o.state for o in outcomes(fetcher, job).values()] == [Outcome.INDEXED] * 24
    throttled = site.requests["429"] - answered_429
    limited = sum(site.requests[f"/limited/{p.relative_to(site.directory).as_posix()}"] for p in images)
    print(f"{throttled} of {limited} requests answered 429")  # a figure for the log, not an assertion

    # The fetcher's metrics show the host's adaptive rate and its answers by code.
    port = next(s.metrics_port for s in stack.SERVICES if s.name == "fetcher")
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert 'taxonstream_fetch_host_rate{host="127.0.0.1"}' in text
    assert 'taxonstream_fetch_requests_total{code="200",host="127.0.0.1"}' in text
    assert 'taxonstream_fetch_bytes_total{host="127.0.0.1"}' in text
