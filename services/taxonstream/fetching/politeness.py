"""Per-host politeness: an adaptive request rate, Retry-After, backoff with jitter and a connection cap.

Each host gets a `HostGate`. Requests are paced at the gate's rate (no bursts: an idle host does not
save up requests). The rate adapts like TCP congestion control, but measured in requests per second:

- slow start: while no limit is known, every answered request adds two requests/s (the rate doubles
  about every 0.35 s) as long as answers stay quick and the rate is what holds us back;
- on 429, 503, a timeout or a connection error the rate falls multiplicatively — once per episode:
  answers to requests sent before the cut are the same episode and cut nothing more — to `decrease`
  times the goodput the host actually delivered; after a 429 that goodput is remembered as the host's
  ceiling (503s and network errors cut the rate but never lower the ceiling: random failures would
  otherwise ratchet it down to nothing);
- below 90 % of the ceiling the rate climbs back quickly; above it, it probes slowly (5 % of the
  ceiling per second), so a host's limit is approached gently and rarely overshot;
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

# Seconds of history used to measure what a host delivers.
WINDOW = 2.0
# At most one rate cut per this many seconds.
CUT_HOLD = 1.0
# Answers remembered to know how quickly a host can answer.
LATENCY_MEMORY = 64
# Requests/s added per answer while no limit is known: the rate doubles about every 0.35 s of answers.
SLOW_START_STEP = 2.0


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
        self.next_send = 0.0
        self.paused_until = 0.0
        self.in_flight = 0
        self.failures = 0  # consecutive, reset by any answer that is not a failure
        self.last_cut = float("-inf")
        self._latencies: deque[float] = deque(maxlen=LATENCY_MEMORY)
        self._rate_bound = False
        self._answered: deque[float] = deque()
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
        self.next_send = max(self.next_send, now) + 1.0 / self.rate
        self._rate_bound = backlog and self.in_flight < self.policy.max_connections
        return now

    def answered(self, sent_at: float, now: float, latency: float) -> None:
        """The host answered normally (an image, or a final status such as 404): it is keeping up."""
        self.in_flight -= 1
        self.failures = 0
        self._answered.append(now)
        self._trim(now)
        self._latencies.append(latency)
        best = min(self._latencies)  # a host that is always slow is judged against itself
        if latency > max(4 * best, best + 2.0):
            return  # answering more slowly than it recently could: not the moment to ask for more
        if not self._rate_bound:
            return  # the rate is not what limits us (few records, or the connection cap): do not inflate it
        if self.ceiling is None:
            self.rate += SLOW_START_STEP
        elif self.rate < 0.9 * self.ceiling:
            self.rate = min(0.9 * self.ceiling, self.rate + 1.0)
        else:
            self.rate += max(0.05 * self.ceiling, 0.1) / self.rate
        self.rate = min(self.rate, self.maximum)

    def throttled_by(self, sent_at: float, now: float, retry_after: float | None, limit: bool = True) -> float:
        """429 (`limit`: the host states a rate limit) or 503: slow down, and pause as asked.

        Returns how long the host is paused from now.
        """
        self.in_flight -= 1
        self.throttled += 1
        self._cut(sent_at, now, limit)
        if retry_after is not None:
            self.paused_until = max(self.paused_until, now + self.attempts.asked_pause(retry_after))
        else:
            self._fail(now)
        return max(0.0, self.paused_until - now)

    def failed(self, sent_at: float, now: float, congestion: bool = True) -> float:
        """A timeout, connection error or server error. Returns how long the host is paused from now."""
        self.in_flight -= 1
        self.errors += 1
        if congestion:  # otherwise (one broken transfer) the record is retried, the host left alone
            self._cut(sent_at, now, limit=False)
            self._fail(now)
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
        """Answers per second over the last WINDOW seconds, when there are enough to judge."""
        self._trim(now)
        if len(self._answered) < 3:
            return None
        return len(self._answered) / WINDOW

    def _cut(self, sent_at: float, now: float, limit: bool) -> None:
        if sent_at <= self.last_cut or now - self.last_cut < CUT_HOLD:
            # Sent before the last cut, or too soon after it: the same episode, already answered for.
            # Failures that go on are met by the backoff pauses, not by halving again and again.
            return
        delivered = self.goodput(now)
        # After a 429 the goodput is the best estimate of the limit (a token bucket lets through about
        # its rate however hard it is pushed); other failures just halve what we were asking.
        base = min(self.rate, delivered) if delivered and limit else self.rate
        if limit:
            self.ceiling = base  # a 429 marks the host's limit
        elif self.ceiling is not None:
            # 503s, timeouts and resets may have nothing to do with our rate (a flaky host fails at any
            # rate): cut, but neither lower the remembered limit nor invent one, or random failures
            # ratchet the rate down to nothing.
            self.ceiling = max(self.ceiling, base)
        self.rate = max(self.policy.minimum, base * self.policy.decrease)
        self.last_cut = now
        self.next_send = max(self.next_send, now + 1.0 / self.rate)

    def _fail(self, now: float) -> None:
        self.failures += 1
        self.paused_until = max(self.paused_until, now + self.attempts.failure_pause(self.failures, self.rng))

    def _trim(self, now: float) -> None:
        horizon = now - WINDOW
        while self._answered and self._answered[0] < horizon:
            self._answered.popleft()
