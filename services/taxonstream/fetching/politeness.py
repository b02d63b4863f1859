"""Per-host politeness: an adaptive request rate, Retry-After, backoff with jitter and a connection cap.

Each host gets a `HostGate`. Requests are paced at the gate's rate (no bursts: an idle host does not
save up requests; a send that leaves late keeps its place by up to half an interval). The rate adapts
like TCP congestion control, but measured in requests per second:

- slow start: while no limit is known, every answered request adds two requests/s (the rate doubles
  about every 0.35 s) as long as answers stay quick and the rate is what holds us back;
- the first 429 ends it: the goodput of the last seconds becomes the host's ceiling, the rate halves;
- each later 429 measures the limit between two refusals, as TCP's ssthresh (see `_refused`): the
  ceiling becomes what the host took since the previous 429, the rate is held just under it, the gap
  to an upper bound is crossed in a few seconds and what lies past it only probed slowly — a 429
  usually costs a pause of a second or more, probing costs little;
- a 503, a timeout or a connection error halves the rate, once per episode (answers to requests sent
  before the cut are the same episode), and never lowers the ceiling: random failures would otherwise
  ratchet it down to nothing;
- below 95 % of the ceiling the rate climbs back quickly, then by 1 % of the ceiling per second;
- a host whose answers slow down (latency well above its best) is not pushed harder;
- Retry-After (seconds or HTTP-date) pauses the host for as long as asked (bounded); repeated failures
  without one pause it for an exponential backoff with jitter — both numbers from the attempt policy
  (`attempts.py`), which the engine's scheduler and the service's host gates share.

The gate only keeps state; its owner asks it when the host may be sent to next, and reports answers.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from taxonstream.core.errors import Failed
from taxonstream.fetching.attempts import NOT_SENT, AttemptPolicy, RetryLater

# Seconds of history used to measure what a host delivers (at slow start's exit).
WINDOW = 2.0
# Goodput over less than this is not judged (a host that answered for 0.1 s has no rate yet).
MIN_SPAN = 0.25
# At most one rate cut per this many seconds for 503s, timeouts and connection errors.
CUT_HOLD = 1.0
# A 429 for a request sent this long after the last cut is a new episode: the rate is still too high.
# Shorter than CUT_HOLD because a 429 is a clear signal (simulated 6/s burst 30, no Retry-After: 42
# 429s in six runs at 0.5 s, 62 at 1 s).
REFUSAL_HOLD = 0.5
# Answers remembered to know how quickly a host can answer.
LATENCY_MEMORY = 64
# Requests/s added per answer while no limit is known: the rate doubles about every 0.35 s of answers.
SLOW_START_STEP = 2.0
# Below this share of the ceiling the rate climbs back by one request/s per answer (fast).
FAST_CLIMB = 0.95
# Then it probes by this share of the ceiling per second; above a ceiling measured between two 429s,
# at ABOVE times that: a 429 costs a pause of ≥ 1 s (Retry-After) or a backoff, probing costs little.
PROBE = 0.01
ABOVE = 0.5
# Seconds in which the gap between a 429's two bounds on the limit is climbed (see `_refused`).
BRACKET = 5.0
# After a 429 the rate is set just under the measured ceiling (it is a lower bound: within 3 %).
HOLD = 0.97
# A request sent late (a busy machine wakes a worker late) keeps its place in the schedule by up to
# this share of an interval, so the rate asked is the rate sent (simulated 12/s, 0–30 ms late
# wake-ups: 1.23x the floor without it, 1.11x with it).
CATCH_UP = 0.5


@dataclass(frozen=True)
class RatePolicy:
    initial: float = 4.0
    minimum: float = 0.1
    maximum: float = 500.0
    decrease: float = 0.5
    max_connections: int = 8

    @classmethod
    def from_settings(cls, settings) -> RatePolicy:  # FetcherSettings; untyped to avoid an import cycle
        return cls(
            initial=settings.fetch_initial_rate,
            minimum=settings.fetch_min_rate,
            maximum=settings.fetch_max_rate,
            decrease=settings.fetch_rate_decrease,
            max_connections=settings.fetch_max_connections_per_host,
        )


class HostGate:
    """What one host allows now. Not thread-safe: its owner calls it under its own lock."""

    def __init__(
        self, policy: RatePolicy, attempts: AttemptPolicy | None = None, rng: Callable[[], float] = random.random
    ) -> None:
        self.policy = policy
        self.attempts = attempts or AttemptPolicy()
        self.rng = rng
        self.rate = policy.initial
        self.maximum = policy.maximum
        self.ceiling: float | None = None
        self.refused_at: float | None = None  # the rate the host last refused (429) at, after slow start
        self.upper: float | None = None  # the most the host's limit can be, measured at that refusal
        self.next_send = 0.0
        self.paused_until = 0.0
        self.in_flight = 0
        self.failures = 0  # consecutive, reset by any answer that is not a failure
        self.last_cut = float("-inf")
        self._latencies: deque[float] = deque(maxlen=LATENCY_MEMORY)
        self._rate_bound = False
        self._answered: deque[float] = deque()
        self._first_sent: float | None = None
        self._since_cut = 0  # answers since the last rate cut: what the host took since
        self._cut_pause = 0.0  # how long the host was paused right after that cut
        # Counters for reports and metrics.
        self.requests = 0
        self.throttled = 0
        self.errors = 0

    # -- asking ---------------------------------------------------------------------------------
    def ready_at(self) -> float:
        """The earliest time the next request may be sent (ignoring the connection cap)."""
        return max(self.next_send, self.paused_until)

    def can_send(self, now: float) -> bool:
        return self.in_flight < self.policy.max_connections and now >= self.ready_at()

    # -- telling --------------------------------------------------------------------------------
    def settle(self, sent_at: float, now: float, latency: float, error: Exception | None = None) -> float:
        """How one request ended, in the policy's terms; returns how long the host is paused from now.

        `error`: None (an image), a RetryLater (throttled, or a failure another try may cure), a Failed
        (final: refused before sending, a body that took too long, or an answer such as 404).
        """
        if isinstance(error, RetryLater):
            if error.throttled:
                return self.throttled_by(sent_at, now, error.delay, limit=error.states_limit)
            return self.failed(sent_at, now, congestion=error.congestion)
        if isinstance(error, Failed) and error.reason in NOT_SENT:
            self.released()
            return 0.0
        if isinstance(error, Failed) and error.reason == "timeout":  # the body took too long: the host struggles
            return self.failed(sent_at, now)
        self.answered(sent_at, now, latency)  # an image or a final answer (404, not an image …): it keeps up
        return 0.0

    def sent(self, now: float, backlog: bool = True) -> float:
        """A request leaves now; returns its send time (to hand back with its answer).

        `backlog`: more of this host's work is waiting. Only then is the rate what holds us back, and
        only then may answers raise it (otherwise a host with few records, or held by the connection
        cap, would see its rate inflated to numbers it never served).
        """
        self.in_flight += 1
        self.requests += 1
        if self._first_sent is None:
            self._first_sent = now
        self.next_send = max(self.next_send, now - CATCH_UP / self.rate) + 1.0 / self.rate
        self._rate_bound = backlog and self.in_flight < self.policy.max_connections
        return now

    def answered(self, sent_at: float, now: float, latency: float) -> None:
        """The host answered normally (an image, or a final status such as 404): it is keeping up."""
        self.in_flight -= 1
        self.failures = 0
        self._answered.append(now)
        self._since_cut += 1
        self._trim(now)
        self._latencies.append(latency)
        best = min(self._latencies)  # a host that is always slow is judged against itself
        if latency > max(4 * best, best + 2.0):
            return  # answering more slowly than it recently could: not the moment to ask for more
        if not self._rate_bound:
            return  # the rate is not what limits us (few records, or the connection cap): do not inflate it
        if self.ceiling is None:
            self.rate += SLOW_START_STEP
        elif self.rate < FAST_CLIMB * self.ceiling:
            self.rate = min(FAST_CLIMB * self.ceiling, self.rate + 1.0)
        else:
            per_second = max(PROBE * self.ceiling, 0.1)
            if self.upper is not None and self.rate < self.upper:
                # the limit is somewhere between the ceiling and `upper`: cross that gap in BRACKET seconds
                per_second = max(per_second, (self.upper - self.ceiling) / BRACKET)
            elif self.upper is not None:
                per_second *= ABOVE  # past what the host took: slowly, a 429 costs a pause
            self.rate += per_second / self.rate  # per answer: `per_second` requests/s more each second
        self.rate = min(self.rate, self.maximum)

    def throttled_by(self, sent_at: float, now: float, retry_after: float | None, limit: bool = True) -> float:
        """429 (`limit`: the host states a rate limit) or 503: slow down, and pause as asked.

        Returns how long the host is paused from now.
        """
        self.in_flight -= 1
        self.throttled += 1
        cut = self._refused(sent_at, now) if limit else self._cut(sent_at, now)
        if retry_after is not None:
            self.paused_until = max(self.paused_until, now + self.attempts.asked_pause(retry_after))
        else:
            self._fail(now)
        if cut:
            self._cut_pause = max(0.0, self.paused_until - now)
        return max(0.0, self.paused_until - now)

    def failed(self, sent_at: float, now: float, congestion: bool = True) -> float:
        """A timeout, connection error or server error. Returns how long the host is paused from now."""
        self.in_flight -= 1
        self.errors += 1
        if congestion:  # otherwise (one broken transfer) the record is retried, the host left alone
            cut = self._cut(sent_at, now)
            self._fail(now)
            if cut:
                self._cut_pause = max(0.0, self.paused_until - now)
        return max(0.0, self.paused_until - now)

    def released(self) -> None:
        """A slot taken with `sent` was not used for a request after all (refused before connecting)."""
        self.in_flight -= 1
        self.requests -= 1

    def limit(self, max_rate: float) -> None:
        """An upper bound from the host itself (robots.txt Crawl-delay)."""
        self.maximum = max(self.policy.minimum, min(self.maximum, max_rate))
        self.rate = min(self.rate, self.maximum)

    # -- inside ---------------------------------------------------------------------------------
    def goodput(self, now: float) -> float | None:
        """Answers per second over the last WINDOW seconds (or since the first request, if later)."""
        self._trim(now)
        if len(self._answered) < 3:
            return None
        start = max(now - WINDOW, self._first_sent if self._first_sent is not None else now)
        return len(self._answered) / max(MIN_SPAN, now - start)

    def _refused(self, sent_at: float, now: float) -> bool:
        """A 429: the host states a limit. Set the ceiling from what it took since the last cut; True if cut.

        A token bucket was empty at the last 429 and is empty again now, so the answers in between (A,
        over T seconds, P of them paused) bound its rate: A / T ≤ rate ≲ A / (T − P) — more than A / T
        only where it overflowed while we waited. The rate we were refused at is about its rate or more.
        The ceiling is the lower bound, the rate is held just under it, the gap up to the upper bound is
        crossed in BRACKET seconds and what lies past it only probed slowly (TCP's ssthresh, in requests/s).
        """
        if sent_at <= self.last_cut or now - self.last_cut < REFUSAL_HOLD:
            return False  # sent before the last cut, or right after it: the same episode, answered for
        if self.ceiling is None:
            # Slow start's exit: goodput over its last seconds (a first burst makes it a little high).
            delivered = self.goodput(now)
            self.ceiling = min(self.rate, delivered) if delivered else self.rate
            self.rate = self.ceiling * self.policy.decrease
        else:
            span = now - self.last_cut
            self.refused_at = self.rate
            # Never below a multiplicative cut: the span may hold time the host had no work waiting.
            self.ceiling = min(self.rate, max(self._since_cut / span, self.rate * self.policy.decrease))
            active = span - self._cut_pause
            took = self._since_cut / active if active >= REFUSAL_HOLD else self.rate
            self.upper = max(self.ceiling, min(self.rate, took))
            self.rate = self.ceiling * HOLD
        self.rate = max(self.policy.minimum, self.rate)
        self._after_cut(now)
        return True

    def _cut(self, sent_at: float, now: float) -> bool:
        """A 503, timeout or connection error: halve what we were asking, once per episode; True if cut."""
        if sent_at <= self.last_cut or now - self.last_cut < CUT_HOLD:
            # Sent before the last cut, or too soon after it: the same episode, already answered for.
            # Failures that go on are met by the backoff pauses, not by halving again and again.
            return False
        if self.ceiling is not None:
            # These may have nothing to do with our rate (a flaky host fails at any rate): cut, but
            # neither lower the remembered limit nor invent one, or random failures ratchet it down.
            self.ceiling = max(self.ceiling, self.rate)
        self.rate = max(self.policy.minimum, self.rate * self.policy.decrease)
        self._after_cut(now)
        return True

    def _after_cut(self, now: float) -> None:
        self.last_cut = now
        self._since_cut = 0
        self.next_send = max(self.next_send, now + 1.0 / self.rate)

    def _fail(self, now: float) -> None:
        self.failures += 1
        self.paused_until = max(self.paused_until, now + self.attempts.failure_pause(self.failures, self.rng))

    def _trim(self, now: float) -> None:
        horizon = now - WINDOW
        while self._answered and self._answered[0] < horizon:
            self._answered.popleft()
