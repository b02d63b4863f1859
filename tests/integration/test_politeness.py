"""A provider that rate-limits with 429 + Retry-After still gives every image, and is left alone as asked.

The provider here keeps its own log of every request it saw (when it arrived, what it answered), and the
assertions read that log: it did answer 429s, and after each one the fetcher sent nothing for the
Retry-After it asked for. That is the server's observed spacing; nothing times the fetcher's own code.
"""

from __future__ import annotations

import functools
import http.server
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from pipeline_helpers import outcomes, submit, unique_job, wait_done

from taxonstream.v1.messages_pb2 import Outcome
from tools.demo.sample import serve
from tools.stack import local_stack as stack

IMAGES = 24
LIMIT = 4  # answers per rolling second before the provider throttles
RETRY_AFTER = 1  # seconds, as the provider's Retry-After header says
# Requests the fetcher had already sent when a 429 reached it arrive just after that 429; on loopback they
# take well under this many seconds to reach the handler, even on a busy machine.
IN_FLIGHT_GRACE = 0.3
# The same rules as the session's test site: the fetcher reads robots.txt once per host name (127.0.0.1)
# and pod, so whichever site it asks first sets the rules for all of them.
ROBOTS = b"User-agent: *\nDisallow: /private/\n"


@dataclass(frozen=True)
class Seen:
    arrived: float  # time.monotonic() when the handler got the request
    answered: float  # just before the answer was written (no later than the client could read it)
    path: str
    status: int


@dataclass
class ProviderLog:
    lock: threading.Lock = field(default_factory=threading.Lock)
    seen: list[Seen] = field(default_factory=list)
    served: list[float] = field(default_factory=list)  # when images were served, for the rolling limit
    cold: bool = True  # the first image request is throttled whatever the rate (see below)


class ThrottlingProvider(http.server.BaseHTTPRequestHandler):
    """Images under /limited/<name> from `directory`; 429 + Retry-After beyond LIMIT a second.

    The fetcher's gate for 127.0.0.1 lives as long as its pod and may have learned a rate below LIMIT from
    an earlier run; the provider therefore also throttles the first image request it gets, so every run
    exercises a 429 and the wait after it.
    """

    def __init__(self, *args, directory: Path, log: ProviderLog, **kwargs) -> None:
        self.directory = directory
        self.provider_log = log
        super().__init__(*args, **kwargs)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        arrived = time.monotonic()
        path = urlsplit(self.path).path
        kind, _, name = path.strip("/").partition("/")
        file = self.directory / name
        if path == "/robots.txt":
            status, body = 200, ROBOTS
        elif kind == "limited" and file.is_file():
            status, body = self._admit(arrived), file.read_bytes()
        else:
            status, body = 404, b"not found"
        log = self.provider_log
        with log.lock:
            log.seen.append(Seen(arrived, time.monotonic(), path, status))
        self.send_response(status)
        if status == 429:
            self.send_header("Retry-After", str(RETRY_AFTER))
            body = b""
        self.send_header("Content-Type", "image/jpeg" if status == 200 and kind == "limited" else "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _admit(self, now: float) -> int:
        log = self.provider_log
        with log.lock:
            log.served[:] = [t for t in log.served if now - t < 1.0]
            if log.cold or len(log.served) >= LIMIT:
                log.cold = False
                return 429
            log.served.append(now)
            return 200


def test_a_rate_limited_provider_is_left_alone_for_its_retry_after_and_loses_no_image(fetcher, site):
    images = site.images(IMAGES)
    log = ProviderLog()
    handler = functools.partial(ThrottlingProvider, directory=site.directory, log=log)
    job = unique_job("limited")
    with serve(None, handler) as base_url:
        urls = [f"{base_url}/limited/{image.relative_to(site.directory).as_posix()}" for image in images]
        submit(fetcher, job, urls)
        status = wait_done(fetcher, job, timeout=300)
    assert (status.indexed, status.failed) == (IMAGES, 0), dict(status.failed_by_reason)
    assert [o.state for o in outcomes(fetcher, job).values()] == [Outcome.INDEXED] * IMAGES

    with log.lock:
        seen = sorted(log.seen, key=lambda s: s.arrived)
    throttled = [s for s in seen if s.status == 429]
    assert throttled, "the provider never answered 429"
    # Every throttled image was asked again and served in the end.
    served = {s.path for s in seen if s.status == 200}
    assert {s.path for s in throttled} <= served
    # After each 429: apart from requests already on their way, nothing until Retry-After has passed.
    gaps = []
    for throttle in throttled:
        later = [s.arrived - throttle.answered for s in seen if s.arrived > throttle.answered + IN_FLIGHT_GRACE]
        assert later, f"nothing was asked after the 429 for {throttle.path}"
        gaps.append(min(later))
    too_soon = [round(gap, 3) for gap in gaps if gap < RETRY_AFTER]
    assert not too_soon, f"asked again {too_soon} s after a 429 with Retry-After: {RETRY_AFTER}"
    print(f"{len(throttled)} of {len(seen)} requests answered 429; shortest wait after one {min(gaps):.2f} s")

    # The fetcher's metrics show the host's adaptive rate and its answers by code, the 429s included.
    port = next(s.metrics_port for s in stack.SERVICES if s.name == "fetcher")
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert 'taxonstream_fetch_host_rate{host="127.0.0.1"}' in text
    assert 'taxonstream_fetch_requests_total{code="200",host="127.0.0.1"}' in text
    assert 'taxonstream_fetch_requests_total{code="429",host="127.0.0.1"}' in text
    assert 'taxonstream_fetch_bytes_total{host="127.0.0.1"}' in text
