"""The attempt policy: what is retried, how long to wait, when to give up, robots.txt — and that the engine
and the service's host gates both take those decisions from the policy object they are given."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from taxonstream.core.errors import Failed
from taxonstream.fetching.attempts import (
    RETRYABLE_STATUS,
    AttemptPolicy,
    RetryLater,
    Tally,
    robots_refusal,
    status_failure,
    transport_failure,
)
from taxonstream.fetching.download import Downloaded
from taxonstream.fetching.engine import FetchEngine, Task
from taxonstream.fetching.hosts import HostGates
from taxonstream.fetching.politeness import HostGate, RatePolicy
from taxonstream.fetching.robots import parse, unreachable
from taxonstream.fetching.settings import FetcherSettings


def test_retry_after_is_honoured_in_both_forms_and_capped():
    retry = status_failure(429, "http://h/a.jpg", "120")
    assert isinstance(retry, RetryLater) and retry.throttled and retry.delay == 120.0
    in_a_minute = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    dated = status_failure(503, "http://h/a.jpg", in_a_minute)
    assert isinstance(dated, RetryLater) and 55 <= dated.delay <= 61
    policy = AttemptPolicy(max_retry_after=30.0)
    assert policy.asked_pause(7.0) == 7.0
    assert policy.asked_pause(86_400.0) == 30.0  # a host asking for a day is asked again after the cap
    gate = HostGate(RatePolicy(), policy)
    assert gate.settle(gate.sent(10.0), 10.0, 0.0, retry) == pytest.approx(30.0)  # 120 s asked, 30 s kept


def test_backoff_grows_and_is_bounded():
    policy = AttemptPolicy(backoff_base=0.5, backoff_max=8.0)
    most = [policy.failure_pause(n, rng=lambda: 1.0) for n in range(1, 10)]
    least = [policy.failure_pause(n, rng=lambda: 0.0) for n in range(1, 10)]
    assert most[0] == 0.0  # the first failure is answered by the lower rate alone
    assert most[1:6] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert max(most) == 8.0 and most[-1] == 8.0
    assert least[1:6] == [0.25, 0.5, 1.0, 2.0, 4.0]  # the jitter takes at most half the step


@pytest.mark.parametrize("status", sorted({400, 401, 403, 404, 410, 451, 501} - RETRYABLE_STATUS))
def test_final_status_codes_are_not_retried(status):
    outcome = status_failure(status, "http://h/a.jpg", "5")
    assert isinstance(outcome, Failed) and not isinstance(outcome, RetryLater)
    assert outcome.reason == f"http_{status}"


def test_which_transport_failures_are_retried():
    assert isinstance(transport_failure(Failed("timeout", "read timed out")), RetryLater)
    assert isinstance(transport_failure(Failed("connection_error", "reset")), RetryLater)
    cut = transport_failure(Failed("incomplete_body", "cut"))
    assert isinstance(cut, RetryLater) and not cut.congestion  # one broken file says little of the host
    assert not isinstance(transport_failure(Failed("tls_error", "bad certificate")), RetryLater)


def test_throttles_and_errors_have_their_own_budgets():
    policy = AttemptPolicy(attempts=2, throttled_attempts=3)
    tally = Tally()
    throttled = RetryLater(Failed("http_429", "slow down"), throttled=True)
    error = RetryLater(Failed("connection_error", "reset"))
    assert [policy.spent(tally, throttled) for _ in range(3)] == [False, False, True]
    tally = Tally()
    assert [policy.spent(tally, error) for _ in range(2)] == [False, True]
    tally = Tally()
    policy.spent(tally, throttled)  # a throttle does not use up the error budget, nor the other way round
    assert not policy.spent(tally, error) and (tally.throttles, tally.errors) == (1, 1)


def test_a_robots_disallow_is_final():
    rules = parse("User-agent: *\nDisallow: /private/\n")
    refusal = robots_refusal(rules, "http://h/private/a.jpg", "taxonstream")
    assert isinstance(refusal, Failed) and not isinstance(refusal, RetryLater)
    assert refusal.reason == "robots_disallowed"
    assert robots_refusal(rules, "http://h/public/a.jpg", "taxonstream") is None
    down = robots_refusal(unreachable("robots.txt answered 503"), "http://h/a.jpg", "taxonstream")
    assert down is not None and down.reason == "robots_unreachable"
    policy = AttemptPolicy(attempts=3)
    retry = RetryLater(Failed("http_503", "HTTP 503"), throttled=True)
    assert [policy.robots_unreadable(n, retry) is None for n in (1, 2, 3)] == [True, True, False]


class Refusing:
    """A downloader whose every request fails the same way; counts requests."""

    def __init__(self, failure: Exception) -> None:
        self.failure = failure
        self.urls: list[str] = []
        self.lock = threading.Lock()

    def fetch(self, url: str, expect_image: bool = True, max_bytes: int | None = None):
        with self.lock:
            self.urls.append(url)
        raise self.failure

    def close(self) -> None:
        pass


@pytest.mark.parametrize("budget", [1, 2])
@pytest.mark.parametrize("throttled", [False, True])
def test_the_engine_and_the_service_host_gates_follow_the_same_policy_object(budget, throttled):
    # The settings say 3 and 10 attempts; the policy object passed in says `budget`: both must obey it.
    settings = FetcherSettings(fetch_initial_rate=200.0, fetch_max_connections=2)
    policy = AttemptPolicy(attempts=budget, throttled_attempts=budget, backoff_base=0.01, backoff_max=0.02)
    reason = "http_503" if throttled else "connection_error"
    failure = RetryLater(Failed(reason, "no"), delay=0.0 if throttled else None, throttled=throttled)

    engine_downloads = Refusing(failure)
    engine = FetchEngine(settings, downloader=engine_downloads, attempts=policy)
    results = []
    engine.on_result = results.append
    engine.run([Task("a", "http://example.org/a.jpg")])

    service_downloads = Refusing(failure)
    gates = HostGates(service_downloads, RatePolicy(initial=200.0), policy, "taxonstream")
    with pytest.raises(Failed) as caught:
        gates.download("http://example.org/a.jpg")

    assert len(engine_downloads.urls) == len(service_downloads.urls) == budget
    assert results[0].reason == caught.value.reason == reason
    assert results[0].attempts == budget
    assert results[0].message == caught.value.message == f"no (after {budget} attempts)"


class RobotsOnly(Refusing):
    """Serves `rules` as robots.txt (or fails it with `failure`); any other request is a test failure."""

    def __init__(self, rules: str = "", failure: Exception | None = None) -> None:
        super().__init__(AssertionError("only robots.txt may be requested"))
        self.rules, self.robots_failure = rules, failure

    def fetch(self, url: str, expect_image: bool = True, max_bytes: int | None = None):
        if not url.endswith("/robots.txt"):
            return super().fetch(url)
        with self.lock:
            self.urls.append(url)
        if self.robots_failure is not None:
            raise self.robots_failure
        return Downloaded(self.rules.encode(), url)


def test_the_service_host_gates_send_nothing_robots_txt_forbids():
    downloads = RobotsOnly("User-agent: *\nDisallow: /\n")
    gates = HostGates(downloads, RatePolicy(initial=200.0), AttemptPolicy(), "taxonstream")
    for _ in range(2):
        with pytest.raises(Failed) as caught:
            gates.obey_robots("http://example.org/a.jpg")
        assert caught.value.reason == "robots_disallowed"
    assert downloads.urls == ["http://example.org/robots.txt"]  # read once, the image never asked for


def test_an_unreadable_robots_txt_disallows_all_after_the_error_budget():
    downloads = RobotsOnly(failure=RetryLater(Failed("connection_error", "reset")))
    policy = AttemptPolicy(attempts=2, backoff_base=0.01, backoff_max=0.02)
    gates = HostGates(downloads, RatePolicy(initial=200.0), policy, "taxonstream")
    with pytest.raises(Failed) as caught:
        gates.obey_robots("http://example.org/a.jpg")
    assert caught.value.reason == "robots_unreachable"
    assert len(downloads.urls) == 2
