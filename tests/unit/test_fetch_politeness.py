"""The per-host gate: adaptive rate, Retry-After, backoff with jitter, connection cap — on a simulated clock."""

from __future__ import annotations

import heapq
import math
import random

import pytest

from taxonstream.fetching.attempts import AttemptPolicy, backoff
from taxonstream.fetching.politeness import HostGate, RatePolicy


def simulate(
    rate: float,
    images: int,
    retry_after: bool,
    latency: float = 0.002,
    seed: int = 1,
    burst: float | None = None,
    late: float = 0.0,
):
    """A host with a token bucket (burst: one second of its rate unless given) against one gate, in
    simulated time. `late`: each send happens up to this many seconds after the gate allows it (a busy
    machine waking its workers late). Returns (seconds taken, requests, requests answered 429, the gate).
    """
    rng = random.Random(seed)
    gate = HostGate(RatePolicy(max_connections=8), rng=rng.random)
    burst = rate if burst is None else burst
    tokens, refilled, now = burst, 0.0, 0.0
    pending, done, requests, refused = images, 0, 0, 0
    answers: list[tuple[float, float, int, float | None]] = []
    while done < images:
        while pending and gate.can_send(now):
            sent = gate.sent(now, backlog=pending > 1)
            requests += 1
            pending -= 1
            tokens, refilled = min(burst, tokens + (now - refilled) * rate), now
            status = 200 if tokens >= 1 else 429
            tokens -= 1 if status == 200 else 0
            # as the bench farm asks: the seconds until a token is back, at least 1
            asked = float(max(1, math.ceil((1 - tokens) / rate))) if status == 429 and retry_after else None
            heapq.heappush(answers, (now + latency, sent, status, asked))
        moments = [answers[0][0]] if answers else []
        if pending and gate.in_flight < 8:
            moments.append(max(gate.ready_at() + late * rng.random(), now + 1e-6))
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
    return now, requests, refused, gate


@pytest.mark.parametrize("retry_after", [False, True])
@pytest.mark.parametrize(("rate", "images"), [(5, 100), (20, 400), (100, 2000)])
def test_a_rate_limited_host_is_found_and_kept_to(rate, images, retry_after):
    seconds, requests, refused, _ = simulate(rate, images, retry_after)
    floor = (images - rate) / rate  # the bucket's first second is free
    assert seconds <= 1.3 * floor
    assert refused <= 8  # a handful per run, however many images the host has
    assert requests == images + refused


@pytest.mark.parametrize("late", [0.0, 0.03])
@pytest.mark.parametrize(
    ("rate", "burst", "images", "retry_after"),
    [(12, 5, 360, True), (6, 30, 200, False), (30, 60, 800, True), (20, 20, 400, True), (10, 10, 200, False)],
)
def test_small_and_large_bursts_and_late_wake_ups_stay_near_the_floor(rate, burst, images, retry_after, late):
    """The bench's rate-limited hosts (both farms), answered in 10 ms, with workers woken up to 30 ms late."""
    seconds, requests, refused, gate = simulate(rate, images, retry_after, 0.01, burst=burst, late=late)
    floor = (images - burst) / rate
    assert seconds <= 1.2 * floor
    assert refused <= 8
    assert 0.8 * rate <= gate.ceiling <= 1.1 * rate  # measured between 429s, not the burst's goodput


def test_the_ceiling_is_what_the_host_took_between_two_refusals():
    gate = HostGate(RatePolicy(initial=20))
    assert gate.throttled_by(gate.sent(0.0), 0.01, 1.0) == pytest.approx(1.0)  # slow start's exit, 1 s pause
    assert gate.ceiling == 20 and gate.rate == 10 and gate.upper is None
    now = 1.01
    for _ in range(80):  # then 8 s of answers at 10/s
        now += 0.1
        gate.answered(gate.sent(now, backlog=False), now, 0.005)
    gate.throttled_by(gate.sent(now), now + 0.01, 1.0)
    assert gate.refused_at == 10
    # 80 answers in the 9 s since the last 429 (its pause counted) and in the 8 s not paused
    assert gate.ceiling == pytest.approx(80 / 9.01, rel=0.001)
    assert gate.upper == pytest.approx(80 / 8.01, rel=0.001)
    assert gate.rate == pytest.approx(0.97 * gate.ceiling)


def climb(upper: float | None, seconds: float = 1.0) -> float:
    """How far a gate at its ceiling (10/s) raises its rate in `seconds` of quick answers."""
    gate = HostGate(RatePolicy())
    gate.ceiling, gate.rate, gate.upper = 10.0, 10.0, upper
    now = 0.0
    while now < seconds:
        now = max(now + 0.001, gate.ready_at())
        gate.answered(gate.sent(now), now + 0.001, 0.001)
    return gate.rate - 10.0


def test_past_what_the_host_took_the_probe_is_slower_and_a_wide_gap_is_crossed_quickly():
    plain, past, gap = climb(None), climb(10.0), climb(13.0)
    assert plain == pytest.approx(0.1, rel=0.2)  # 1 % of the ceiling per second
    assert 0 < past < 0.6 * plain  # the host refused right there: half the probe
    assert gap == pytest.approx(3.0 / 5, rel=0.2)  # 10 to 13 in five seconds
    assert 3.0 < climb(13.0, seconds=10.0) < 3.0 + 0.4  # and past 13 at 0.05/s per second


def test_a_late_send_keeps_its_place_but_an_idle_host_saves_up_nothing():
    gate = HostGate(RatePolicy(initial=10))  # one request every 0.1 s
    now = 0.0
    for _ in range(100):
        now = gate.ready_at() + 0.04  # every send 40 ms late: under half an interval
        gate.sent(now)
        gate.answered(now, now + 0.001, 0.001)
    assert 100 / now > 9.5  # the rate asked is the rate sent (without catching up: 1/0.14 = 7.1/s)
    idle = HostGate(RatePolicy(initial=10))
    idle.sent(0.0)
    idle.answered(0.0, 0.001, 0.001)
    idle.sent(60.0)  # a minute later
    # at most half an interval of credit, not a minute's burst
    assert idle.ready_at() == pytest.approx(60.0 + 0.5 / idle.rate)


def test_retry_after_pauses_the_host_as_long_as_asked_but_bounded():
    gate = HostGate(RatePolicy(), AttemptPolicy(max_retry_after=30))
    sent = gate.sent(100.0)
    assert gate.throttled_by(sent, 100.5, 7.0) == pytest.approx(7.0)
    assert gate.ready_at() >= 107.5 and not gate.can_send(107.0)
    sent = gate.sent(108.0)
    assert gate.throttled_by(sent, 108.0, 3600.0) == pytest.approx(30.0)


@pytest.mark.parametrize("limit", [True, False])
def test_one_episode_cuts_the_rate_once(limit):
    gate = HostGate(RatePolicy(initial=40, decrease=0.5))
    sends = [gate.sent(0.0) for _ in range(6)]
    gate.throttled_by(sends[0], 0.01, None, limit=limit)
    after_first = gate.rate
    for sent in sends[1:]:
        gate.throttled_by(sent, 0.02, None, limit=limit)
    assert after_first == pytest.approx(20.0)
    assert gate.rate == after_first  # the other five were sent before the cut
    soon = gate.sent(0.3)
    gate.throttled_by(soon, 0.31, None, limit=limit)
    assert gate.rate == after_first  # right after the cut: the backoff answers it, not another cut
    later = gate.sent(5.0)
    gate.throttled_by(later, 5.01, None, limit=limit)
    # nothing was answered since the first cut: a plain halving (a 429 holds the rate just under it)
    assert 9.0 <= gate.rate <= 10.0


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
