"""The per-host gate: adaptive rate, Retry-After, backoff with jitter, connection cap — on a simulated clock."""

from __future__ import annotations

import heapq
import random

import pytest

from taxonstream.fetching.attempts import AttemptPolicy, backoff
from taxonstream.fetching.politeness import HostGate, RatePolicy


def simulate(rate: float, images: int, retry_after: bool, latency: float = 0.002, seed: int = 1):
    """A host with a token bucket (burst = one second of its rate) against one gate, in simulated time.

    Returns (seconds taken, requests, requests answered 429).
    """
    rng = random.Random(seed)
    gate = HostGate(RatePolicy(max_connections=8), rng=rng.random)
    tokens, refilled, now = rate, 0.0, 0.0
    pending, done, requests, refused = images, 0, 0, 0
    answers: list[tuple[float, float, int, float | None]] = []
    while done < images:
        while pending and gate.can_send(now):
            sent = gate.sent(now)
            requests += 1
            pending -= 1
            tokens, refilled = min(rate, tokens + (now - refilled) * rate), now
            status = 200 if tokens >= 1 else 429
            tokens -= 1 if status == 200 else 0
            asked = 1.0 if status == 429 and retry_after else None
            heapq.heappush(answers, (now + latency, sent, status, asked))
        moments = [answers[0][0]] if answers else []
        if pending and gate.in_flight < 8:
            moments.append(max(gate.ready_at(), now + 1e-6))
        now = min(moments)
        while answers and answers[0][0] <= now:
            at, sent, status, asked = heapq.heappop(answers)
            if status == 200:
                gate.answered(sent, at, latency)
                done += 1
            else:
                gate.throttled_by(sent, at, asked)
                refused += 1
                pending += 1
    return now, requests, refused


@pytest.mark.parametrize("retry_after", [False, True])
@pytest.mark.parametrize(("rate", "images"), [(5, 100), (20, 400), (100, 2000)])
def test_a_rate_limited_host_is_found_and_kept_to(rate, images, retry_after):
    seconds, requests, refused = simulate(rate, images, retry_after)
    floor = (images - rate) / rate  # the bucket's first second is free
    assert seconds <= 1.3 * floor
    assert refused <= 8  # a handful per run, however many images the host has
    assert requests == images + refused


def test_retry_after_pauses_the_host_as_long_as_asked_but_bounded():
    gate = HostGate(RatePolicy(), AttemptPolicy(max_retry_after=30))
    sent = gate.sent(100.0)
    assert gate.throttled_by(sent, 100.5, 7.0) == pytest.approx(7.0)
    assert gate.ready_at() >= 107.5 and not gate.can_send(107.0)
    sent = gate.sent(108.0)
    assert gate.throttled_by(sent, 108.0, 3600.0) == pytest.approx(30.0)


def test_one_episode_cuts_the_rate_once():
    gate = HostGate(RatePolicy(initial=40, decrease=0.5))
    sends = [gate.sent(0.0) for _ in range(6)]
    gate.throttled_by(sends[0], 0.01, None)
    after_first = gate.rate
    for sent in sends[1:]:
        gate.throttled_by(sent, 0.02, None)
    assert after_first == pytest.approx(20.0)
    assert gate.rate == after_first  # the other five were sent before the cut
    soon = gate.sent(0.5)
    gate.throttled_by(soon, 0.51, None)
    assert gate.rate == after_first  # within a second of the cut: the backoff answers it, not another cut
    later = gate.sent(5.0)
    gate.throttled_by(later, 5.01, None)
    assert gate.rate == pytest.approx(10.0)


def test_random_503s_do_not_ratchet_the_rate_down():
    gate = HostGate(RatePolicy(initial=4), rng=random.Random(3).random)
    failures = random.Random(5)
    now = 0.0
    for _ in range(3000):
        now = max(now + 0.001, gate.ready_at())
        sent = gate.sent(now)
        if failures.random() < 0.1:
            gate.throttled_by(sent, now + 0.002, None, limit=False)
        else:
            gate.answered(sent, now + 0.002, 0.002)
    assert gate.ceiling is None  # a 503 is not a stated limit
    assert 3000 / now > 15  # still well above where it started, however many 503s there were


def test_failures_back_off_exponentially_with_jitter_and_an_answer_resets_them():
    gate = HostGate(RatePolicy(), AttemptPolicy(backoff_base=1.0, backoff_max=8.0), rng=lambda: 1.0)
    pauses = []
    now = 0.0
    for _ in range(6):
        now = max(now, gate.ready_at())
        pauses.append(gate.failed(gate.sent(now), now))
    # the first failure is met by the lower rate alone; then 1, 2, 4, 8 s and the cap
    assert [round(p) for p in pauses[1:]] == [1, 2, 4, 8, 8]
    now = gate.ready_at()
    gate.answered(gate.sent(now), now, 0.01)
    assert gate.failures == 0


def test_backoff_jitter_stays_between_half_and_the_whole_step():
    steps = [backoff(4, 0.5, 60.0, random.Random(n).random) for n in range(200)]
    assert all(2.0 <= s <= 4.0 for s in steps) and max(steps) - min(steps) > 1.0


def test_the_connection_cap_holds_whatever_the_rate():
    gate = HostGate(RatePolicy(initial=1000, max_connections=3))
    now = 0.0
    for _ in range(3):
        assert gate.can_send(now)
        gate.sent(now)
        now += 0.01
    assert not gate.can_send(now + 10)


def test_quick_answers_raise_the_rate_and_slow_ones_do_not():
    quick, slow = HostGate(RatePolicy(initial=4)), HostGate(RatePolicy(initial=4))
    now = 0.0
    for gate, latency in ((quick, 0.05), (slow, 0.05)):
        sent = gate.sent(now)
        gate.answered(sent, now + latency, latency)  # sets the host's best latency
    for step in range(40):
        now = step * 0.05
        for gate, latency in ((quick, 0.05), (slow, 5.0)):
            sent = gate.sent(now)
            gate.answered(sent, now, latency)
    assert quick.rate > 20
    assert slow.rate <= 4 + 2  # only its first, quick answer counted: 100 times slower never raises it


def test_the_rate_is_not_inflated_when_it_is_not_what_limits():
    gate = HostGate(RatePolicy(initial=4))
    for step in range(200):  # one request at a time, nothing else waiting: the rate holds nothing back
        now = step * 2.0
        gate.answered(gate.sent(now, backlog=False), now + 0.01, 0.01)
    assert gate.rate == 4
    capped = HostGate(RatePolicy(initial=4, max_connections=2))
    for step in range(200):  # plenty waiting, but the connection cap is what binds
        now = step * 0.01
        first, second = capped.sent(now), capped.sent(now)
        capped.answered(first, now, 0.01)
        capped.answered(second, now, 0.01)
    assert capped.rate == 4


def test_crawl_delay_caps_the_rate():
    gate = HostGate(RatePolicy(initial=4, maximum=500))
    gate.limit(0.5)  # Crawl-delay: 2
    for step in range(100):
        now = max(step * 0.01, gate.ready_at())
        gate.answered(gate.sent(now), now, 0.001)
    assert gate.rate == pytest.approx(0.5)
    assert gate.ready_at() - now == pytest.approx(2.0)
