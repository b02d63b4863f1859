"""Per-host politeness for the streaming worker: the engine's `HostGate`s, shared by the handler threads.

The worker's records are keyed by host, so one pod owns a host at a time and its gate here is the only
one pacing that host; gates live as long as the pod, so what a host taught us carries across batches.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from taxonstream.fetching import metrics
from taxonstream.fetching.politeness import HostGate, RatePolicy
from taxonstream.fetching.robots import Robots


class HostGates:
    def __init__(self, policy: RatePolicy) -> None:
        self.policy = policy
        self._gates: dict[str, HostGate] = {}
        self._cond = threading.Condition()
        self._waiting: dict[str, int] = {}  # requests of each host waiting in `acquire`
        self._robots: dict[str, Robots] = {}
        self._robots_locks: dict[str, threading.Lock] = {}

    def robots(self, host: str, read: Callable[[], Robots], agent: str) -> Robots:
        """The host's robots.txt rules, read once per pod (concurrent records of the host wait for the one read).

        Crawl-delay caps the host's rate. Unreadable after retries means "disallow all" for this pod's life,
        as RFC 9309 asks; a later pod asks again.
        """
        with self._cond:
            lock = self._robots_locks.setdefault(host, threading.Lock())
        with lock:
            if host not in self._robots:
                rules = read()
                delay = rules.crawl_delay(agent)
                with self._cond:
                    self._robots[host] = rules
                    if delay and delay > 0:
                        self._gate(host).limit(1.0 / delay)
            return self._robots[host]

    def _gate(self, host: str) -> HostGate:
        gate = self._gates.get(host)
        if gate is None:
            gate = self._gates[host] = HostGate(self.policy)
        return gate

    def acquire(self, host: str) -> float:
        """Wait until `host` may be sent a request (its pace, pause and connection cap); returns the send time."""
        with self._cond:
            gate = self._gate(host)
            self._waiting[host] = self._waiting.get(host, 0) + 1
            try:
                while not gate.can_send(now := time.monotonic()):
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

    def answered(self, host: str, sent_at: float, latency: float) -> None:
        self._settle(host, lambda gate, now: gate.answered(sent_at, now, latency))

    def throttled(self, host: str, sent_at: float, retry_after: float | None, limit: bool) -> None:
        self._settle(host, lambda gate, now: gate.throttled_by(sent_at, now, retry_after, limit=limit))

    def failed(self, host: str, sent_at: float, congestion: bool = True) -> None:
        """A timeout or connection error (`congestion`), or one broken transfer that says nothing of the host."""
        self._settle(host, lambda gate, now: gate.failed(sent_at, now, congestion))

    def released(self, host: str) -> None:
        self._settle(host, lambda gate, _now: gate.released())

    def _settle(self, host: str, update) -> None:
        with self._cond:
            gate = self._gate(host)
            update(gate, time.monotonic())
            metrics.RATE.labels(metrics.host_label(host)).set(gate.rate)
            self._cond.notify_all()
