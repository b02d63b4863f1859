"""Deferral in the service's host gates: a pause longer than `defer_after` raises Deferred instead of waiting
in the Kafka batch, the record's attempts carry across its deferrals, and the wait budget ends it as
provider_throttled (no server: a scripted downloader)."""

from __future__ import annotations

import time

import pytest

from taxonstream.core.errors import Deferred, Failed
from taxonstream.fetching.attempts import AttemptPolicy, RetryLater
from taxonstream.fetching.download import Downloaded
from taxonstream.fetching.hosts import HostGates
from taxonstream.fetching.politeness import RatePolicy

URL = "http://example.org/a.jpg"


class Scripted:
    """Answers each request with the next of `answers` (an exception is raised)."""

    def __init__(self, *answers: Exception | bytes) -> None:
        self.answers = list(answers)
        self.sent = 0

    def fetch(self, url: str, expect_image: bool = True, max_bytes: int | None = None) -> Downloaded:
        self.sent += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return Downloaded(answer, url)

    def close(self) -> None:
        pass


def _throttled(after: float) -> RetryLater:
    return RetryLater(Failed("http_429", f"HTTP 429 from {URL}"), delay=after, throttled=True)


def test_a_long_pause_defers_the_record_and_its_attempts_carry_over() -> None:
    downloads = Scripted(_throttled(700.0), b"image")
    policy = AttemptPolicy(max_retry_after=0.3, defer_after=0.05, wait_budget=60.0)
    gates = HostGates(downloads, RatePolicy(initial=200.0), policy, "taxonstream")

    before = time.time()
    with pytest.raises(Deferred) as deferred:
        gates.download(URL, key="r1")
    assert downloads.sent == 1, "no second request while the host's pause lasts"
    assert before < deferred.value.until <= time.time() + 0.3, "until the pause ends: 700 s asked, capped at 0.3"

    time.sleep(max(0.0, deferred.value.until - time.time()))  # the clock the gate keeps, not thread order
    data, attempts = gates.download(URL, key="r1")
    assert data == b"image"
    assert attempts == 2, "the attempt before the deferral counts"


def test_without_a_key_the_pause_is_waited_for_in_place() -> None:
    downloads = Scripted(_throttled(0.2), b"image")
    policy = AttemptPolicy(max_retry_after=0.2, defer_after=0.05)
    gates = HostGates(downloads, RatePolicy(initial=200.0), policy, "taxonstream")
    assert gates.download(URL) == (b"image", 2)


def test_a_wait_past_the_budget_fails_as_provider_throttled_and_is_forgotten() -> None:
    downloads = Scripted(_throttled(700.0), b"image")
    policy = AttemptPolicy(max_retry_after=300.0, defer_after=30.0, wait_budget=100.0)
    gates = HostGates(downloads, RatePolicy(initial=200.0), policy, "taxonstream")
    with pytest.raises(Failed) as caught:
        gates.download(URL, key="r1")
    assert caught.value.reason == "provider_throttled"
    assert "budget 100 s" in caught.value.message
    assert gates._deferred == {}, "an ended record keeps no state"
