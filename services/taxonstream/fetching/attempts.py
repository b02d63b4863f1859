"""The attempt policy: which failed fetches are tried again, how long to wait, when to give up, robots.txt.

One policy for every fetch path — the standalone engine (`engine.py`, a scheduler that requeues) and the
service's blocking host gates (`hosts.py`, a loop per record) — so both retry the same outcomes, wait the
same way and give up at the same count. Everything here is pure: no clock, no I/O.

- Retried: 408, 425, 429, 500, 502, 503, 504, read timeouts, connection errors and bodies cut short. A
  download that overran its *total* time is final (the downloader raises it as such): another attempt
  would trickle in again. Everything else (404, 410, not an image, …) is final at once.
- 429 and 503 are the host saying "slow down": not the record's fault, so they have their own, larger
  budget (10 by default) besides the one for errors (3).
- Retry-After (delta-seconds or HTTP-date) is honoured up to `max_retry_after` (300 s); without one,
  repeated failures wait an exponential backoff with "equal jitter" (tenacity's `wait_exponential` for
  the step: 0.5 s x 2^(n-1) up to 60 s, then half of it random so that waits still grow).
- A pause longer than `defer_after` (30 s) is not waited for inside the service's Kafka batch: the record
  is deferred (its partition paused) and tried again when the pause ends; a record whose waits would
  pass `wait_budget` (30 min from its first deferral, or from its host's last answer when that is later: a
  queue behind a host that still answers is not its fault) fails as `provider_throttled`, retryable with `jobs retry`.
- robots.txt: a disallowed URL, or a host whose robots.txt stayed unreadable (5xx, unreachable) after
  the error budget, ends without a request — final, never retried in this run (RFC 9309 2.3.1.4).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

import tenacity

from taxonstream.core.errors import Failed

if TYPE_CHECKING:
    from taxonstream.fetching.robots import Robots

# Worth another attempt: the server may answer later.
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# The server says "slow down": the host's rate falls and the attempt counts against the throttled budget.
THROTTLE_STATUS = frozenset({429, 503})
# Transport failures another attempt may cure (a read timeout, a reset, a body cut short).
RETRYABLE_TRANSPORT = frozenset({"timeout", "connection_error", "incomplete_body"})
# Failures that happen before any request reaches the host: they say nothing about its manners.
NOT_SENT = frozenset({"blocked_address", "dns_error", "bad_url"})


class RetryLater(Exception):
    """A failure another attempt may cure; `delay` is what the server asked for (Retry-After), if anything."""

    def __init__(self, failure: Failed, delay: float | None = None, throttled: bool = False) -> None:
        super().__init__(str(failure))
        self.failure = failure
        self.delay = delay
        # 429/503: the host asks for less traffic (the politeness layer slows down).
        self.throttled = throttled

    @property
    def congestion(self) -> bool:
        """Whether the failure says the host is loaded. A body cut short says little (often one broken file)."""
        return self.failure.reason != "incomplete_body"

    @property
    def states_limit(self) -> bool:
        """A 429 states a rate limit (the host's ceiling is learnt from it); a 503 may be anything."""
        return self.failure.reason == "http_429"


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header, in either of its forms (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def status_failure(status: int, url: str, retry_after_header: str | None) -> Failed | RetryLater:
    """What a non-200, non-redirect answer means: final, or worth another attempt (maybe after a pause)."""
    failure = Failed(f"http_{status}", f"HTTP {status} from {url}")
    if status in RETRYABLE_STATUS:
        return RetryLater(failure, retry_after(retry_after_header), throttled=status in THROTTLE_STATUS)
    return failure


def transport_failure(failure: Failed) -> Failed | RetryLater:
    """A named network failure, final or worth another attempt."""
    return RetryLater(failure) if failure.reason in RETRYABLE_TRANSPORT else failure


class EqualJitter(tenacity.wait.wait_base):
    """tenacity's exponential step (base x 2^(n-1), capped), of which half is fixed and half random."""

    def __init__(self, base: float, cap: float, rng: Callable[[], float] = random.random) -> None:
        self.step = tenacity.wait_exponential(multiplier=base, max=cap)
        self.rng = rng

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        return self.step(retry_state) * (0.5 + 0.5 * self.rng())


def backoff(failures: int, base: float, cap: float, rng: Callable[[], float] = random.random) -> float:
    """The wait after the `failures`-th failure in a row (1, 2, …): between half and all of the step."""
    state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
    state.attempt_number = max(1, failures)
    return EqualJitter(base, cap, rng)(state)


@dataclass
class Tally:
    """One record's attempts so far."""

    sent: int = 0  # requests that left (what reports call "attempts")
    errors: int = 0
    throttles: int = 0


@dataclass(frozen=True)
class AttemptPolicy:
    attempts: int = 3  # for errors another try may cure
    throttled_attempts: int = 10  # for 429/503
    backoff_base: float = 0.5
    backoff_max: float = 60.0
    max_retry_after: float = 300.0
    defer_after: float = 30.0  # longer waits leave the Kafka batch (max_poll_interval is 600 s)
    wait_budget: float = 1800.0  # seconds a record may spend deferred in all

    @classmethod
    def from_settings(cls, settings) -> AttemptPolicy:  # FetcherSettings; untyped to avoid an import cycle
        return cls(
            attempts=settings.fetch_attempts,
            throttled_attempts=settings.fetch_throttled_attempts,
            backoff_base=settings.fetch_backoff_base,
            backoff_max=settings.fetch_backoff_max,
            max_retry_after=settings.fetch_max_retry_after,
            defer_after=settings.fetch_defer_after,
            wait_budget=settings.fetch_wait_budget,
        )

    # -- giving up --------------------------------------------------------------------------------
    def spent(self, tally: Tally, retry: RetryLater) -> bool:
        """Count a retryable failure; True when it used up its budget (the record fails with it)."""
        if retry.throttled:
            tally.throttles += 1
            return tally.throttles >= self.throttled_attempts
        tally.errors += 1
        return tally.errors >= self.attempts

    @staticmethod
    def gave_up(retry: RetryLater, tally: Tally) -> Failed:
        return Failed(retry.failure.reason, f"{retry.failure.message} (after {tally.sent} attempts)")

    # -- waiting ----------------------------------------------------------------------------------
    def out_of_wait_budget(self, waited: float, asked: float, host: str) -> Failed | None:
        """The final failure when `asked` more seconds, after `waited` deferred already, pass the wait budget."""
        if waited + asked <= self.wait_budget:
            return None
        return Failed(
            "provider_throttled",
            f"{host} asked for {asked:.0f} s more after {waited:.0f} s waited (budget {self.wait_budget:.0f} s)",
        )

    def asked_pause(self, retry_after: float) -> float:
        """Retry-After as asked, capped: a host asking for a day is asked again after `max_retry_after`."""
        return min(max(0.0, retry_after), self.max_retry_after)

    def failure_pause(self, in_a_row: int, rng: Callable[[], float] = random.random) -> float:
        """The pause after `in_a_row` failures without Retry-After. The first is answered by the host's
        lower rate alone; from the second on, exponential backoff with jitter."""
        if in_a_row < 2:
            return 0.0
        return backoff(in_a_row - 1, self.backoff_base, self.backoff_max, rng)

    # -- robots.txt -------------------------------------------------------------------------------
    def robots_unreadable(self, tries: int, retry: RetryLater) -> str | None:
        """After the error budget, why the host's robots.txt counts as unreachable ("disallow all"); else None."""
        if tries < self.attempts:
            return None
        return f"robots.txt could not be fetched: {retry.failure.message}"


def robots_refusal(rules: Robots, url: str, agent: str) -> Failed | None:
    """The final failure for a URL robots.txt forbids (or whose host's rules could not be read), else None."""
    if rules.allowed(url, agent):
        return None
    reason = "robots_unreachable" if rules.disallow_all else "robots_disallowed"
    return Failed(reason, rules.why or "robots.txt disallows this URL")
