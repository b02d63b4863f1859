"""Per-host politeness for blocking callers (the fetcher service's handler threads): gates, attempts, robots.txt.

The worker's records are keyed by host, so one pod owns a host at a time and its gate here is the only
one pacing that host; gates live as long as the pod, so what a host taught us carries across batches.
Each record's attempts run here, one after another on the caller's thread: wait for the host's gate, fetch,
tell the gate how it went, and retry or give up as the attempt policy (`attempts.py`) says — the same
policy the standalone engine's scheduler follows. No sleeping between attempts: the gate's pause
(Retry-After, backoff) is the wait. A record downloaded under a key does not wait out a pause longer than
the policy's `defer_after`: it raises Deferred (the worker pauses its partition and asks again when the
pause ends), its attempts so far kept under the key until it ends, within the policy's wait budget.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from taxonstream.core.errors import Deferred, Failed
from taxonstream.fetching import metrics
from taxonstream.fetching.attempts import NOT_SENT, AttemptPolicy, RetryLater, Tally, robots_refusal
from taxonstream.fetching.download import Downloader
from taxonstream.fetching.politeness import HostGate, RatePolicy
from taxonstream.fetching.robots import Robots, fetch_robots, unreachable
from taxonstream.fetching.safety import host_of
from taxonstream.fetching.settings import FetcherSettings

T = TypeVar("T")


@dataclass
class _Deferred:
    """A record's attempts across its deferrals, and since when (epoch seconds) it waits for itself.

    Its wait budget runs from `since` or from its host's last final answer, whichever is later. `since` is its
    first deferral, moved once to its first deferral after one of its own requests (`sent`): a record that only
    queued behind another's pause (never sent, or its partition held) waited for that one, not for itself.
    Counting from the first deferral alone failed every image after the first of a host that throttles each
    image once (12 s queued + 12 s of its own > a 20 s budget); a host that answers nothing still fails its
    whole queue once the budget has passed.
    """

    tally: Tally = field(default_factory=Tally)
    since: float | None = None
    sent: bool = False  # `since` is a deferral after one of its own requests

    def waited(self, now: float, answered_at: float) -> float:
        if self.since is None or (not self.sent and self.tally.sent > 0):
            self.since, self.sent = now, self.tally.sent > 0
        return now - max(self.since, answered_at)


class HostGates:
    def __init__(self, downloader: Downloader, rates: RatePolicy, attempts: AttemptPolicy, agent: str) -> None:
        self.downloader = downloader
        self.rates = rates
        self.attempts = attempts
        self.agent = agent  # the product token robots.txt groups are matched on
        self._gates: dict[str, HostGate] = {}
        self._cond = threading.Condition()
        self._waiting: dict[str, int] = {}  # requests of each host waiting in `acquire`
        self._robots: dict[str, Robots] = {}
        self._robots_locks: dict[str, threading.Lock] = {}
        # Records deferred and not ended yet, by key. A record whose partition moves to another pod stays
        # here (a few dozen bytes) until this pod's life ends; the new owner starts its budget afresh.
        self._deferred: dict[str, _Deferred] = {}
        self._answered_at: dict[str, float] = {}  # epoch seconds of each host's last final answer

    @classmethod
    def from_settings(cls, settings: FetcherSettings, downloader: Downloader) -> HostGates:
        rates, attempts = RatePolicy.from_settings(settings), AttemptPolicy.from_settings(settings)
        return cls(downloader, rates, attempts, settings.robots_agent)

    # -- what a record's handler calls ------------------------------------------------------------
    def download(self, url: str, key: str | None = None) -> tuple[bytes, int]:
        """The body of `url` and the attempts it took; raises Failed when it is final.

        With `key` (the record's identity), a long pause of the host raises Deferred instead of waiting.
        """
        fetch = lambda: self.downloader.fetch(url)  # noqa: E731 - one line, named for the call below
        got, sent = self._attempt(host_of(url), fetch, "200", lambda got: len(got.data), key=key)
        return got.data, sent

    def obey_robots(self, url: str) -> None:
        """Raises the final Failed when the host's robots.txt forbids `url` (or could not be read)."""
        refusal = robots_refusal(self.robots(url), url, self.agent)
        if refusal is not None:
            raise refusal

    def robots(self, url: str) -> Robots:
        """The host's robots.txt rules, read once per pod (concurrent records of the host wait for the one read).

        Crawl-delay caps the host's rate. Unreadable after the error budget means "disallow all" for this
        pod's life, as RFC 9309 asks; a later pod asks again.
        """
        host = host_of(url)
        with self._cond:
            lock = self._robots_locks.setdefault(host, threading.Lock())
        with lock:
            if host not in self._robots:
                rules = self._read_robots(host, url)
                delay = rules.crawl_delay(self.agent)
                with self._cond:
                    self._robots[host] = rules
                    if delay and delay > 0:
                        self._gate(host).limit(1.0 / delay)
            return self._robots[host]

    # -- attempts ---------------------------------------------------------------------------------
    def _read_robots(self, host: str, url: str) -> Robots:
        tries = 0
        while True:
            try:
                return self._attempt(host, lambda: fetch_robots(self.downloader, url), "robots.txt", once=True)[0]
            except RetryLater as retry:
                tries += 1
                if (why := self.attempts.robots_unreadable(tries, retry)) is not None:
                    return unreachable(why)

    def _attempt(
        self,
        host: str,
        request: Callable[[], T],
        code: str,
        size: Callable[[T], int] | None = None,
        once: bool = False,
        key: str | None = None,
    ) -> tuple[T, int]:
        """`request` under the host's gate until it succeeds or the policy gives up: (its result, attempts).

        `once`: a retryable failure is raised as it is (the caller keeps its own count), after the gate heard of it.
        `key`: a pause longer than the policy's `defer_after` raises Deferred; the attempts are kept for later.
        """
        if key is None:
            return self._attempts(host, request, code, size, once, Tally(), None)
        with self._cond:
            held = self._deferred.get(key) or _Deferred()
        try:
            result = self._attempts(host, request, code, size, once, held.tally, key)
        except Deferred as deferred:
            now = time.time()
            with self._cond:
                waited = held.waited(now, self._answered_at.get(host, 0.0))
            if (failure := self.attempts.out_of_wait_budget(waited, deferred.until - now, host)) is None:
                with self._cond:
                    self._deferred[key] = held
                raise
            self._forget(key)
            raise failure from None
        except BaseException:
            self._forget(key)
            raise
        self._forget(key)
        return result

    def _forget(self, key: str) -> None:
        with self._cond:
            self._deferred.pop(key, None)

    def _attempts(
        self,
        host: str,
        request: Callable[[], T],
        code: str,
        size: Callable[[T], int] | None,
        once: bool,
        tally: Tally,
        key: str | None,
    ) -> tuple[T, int]:
        defer_after = self.attempts.defer_after if key is not None else None
        while True:
            sent_at = self.acquire(host, defer_after)
            tally.sent += 1
            started = time.monotonic()
            try:
                result = request()
            except RetryLater as retry:
                self.count(host, retry.failure.reason)
                self._settle(host, sent_at, 0.0, retry)
                if once:
                    raise
                if self.attempts.spent(tally, retry):
                    raise self.attempts.gave_up(retry, tally) from None
                continue
            except Failed as failure:
                if failure.reason not in NOT_SENT:
                    self.count(host, failure.reason)
                    self._answered(host)
                self._settle(host, sent_at, time.monotonic() - started, failure)
                raise
            self.count(host, code, size(result) if size else 0)
            self._answered(host)
            self._settle(host, sent_at, time.monotonic() - started, None)
            return result, tally.sent

    def _answered(self, host: str) -> None:
        """The host gave a final answer (an image, a 404 …) without asking us to wait: it is making progress."""
        with self._cond:
            self._answered_at[host] = time.time()

    # -- gates ------------------------------------------------------------------------------------
    def _gate(self, host: str) -> HostGate:
        gate = self._gates.get(host)
        if gate is None:
            gate = self._gates[host] = HostGate(self.rates, self.attempts)
        return gate

    def acquire(self, host: str, defer_after: float | None = None) -> float:
        """Wait until `host` may be sent a request (its pace, pause and connection cap); returns the send time.

        With `defer_after`, raises Deferred instead when the host's gate opens later than that from now.
        """
        with self._cond:
            gate = self._gate(host)
            self._waiting[host] = self._waiting.get(host, 0) + 1
            try:
                while not gate.can_send(now := time.monotonic()):
                    if defer_after is not None and (wait := gate.ready_at() - now) > defer_after:
                        raise Deferred(time.time() + wait, f"{host} paused for {wait:.0f} s")
                    self._cond.wait(timeout=max(0.005, min(1.0, gate.ready_at() - now)))
            finally:
                self._waiting[host] -= 1
            # Only while more of the host's requests wait is its rate what holds us back (and may rise).
            return gate.sent(now, backlog=self._waiting[host] > 0)

    @staticmethod
    def count(host: str, reason: str, size: int = 0) -> None:
        """Per-host request metrics, labelled like the standalone engine's (200, 429, timeout …)."""
        label = metrics.host_label(host)
        metrics.REQUESTS.labels(label, reason.removeprefix("http_")).inc()
        if size:
            metrics.BYTES.labels(label).inc(size)

    def _settle(self, host: str, sent_at: float, latency: float, error: Exception | None) -> None:
        with self._cond:
            gate = self._gate(host)
            if gate.settle(sent_at, time.monotonic(), latency, error) > 0:
                metrics.PAUSES.labels(metrics.host_label(host)).inc()
            metrics.RATE.labels(metrics.host_label(host)).set(gate.rate)
            self._cond.notify_all()
