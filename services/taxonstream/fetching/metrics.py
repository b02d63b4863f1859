"""Fetch metrics: what each host is asked and answers, how fast it is paced, how records end.

Per-host request rate is `rate(taxonstream_fetch_requests_total[1m])`; 429/5xx counts are its `code` label.
Host labels are capped (`MAX_HOSTS`); later hosts share the label "other" so a list with a million
providers cannot blow up the metrics endpoint.
"""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge

MAX_HOSTS = 1000

REQUESTS = Counter("taxonstream_fetch_requests_total", "HTTP requests sent, by host and answer", ["host", "code"])
BYTES = Counter("taxonstream_fetch_bytes_total", "Body bytes received, by host", ["host"])
RATE = Gauge("taxonstream_fetch_host_rate", "Current adaptive request rate of a host (requests/s)", ["host"])
PAUSES = Counter("taxonstream_fetch_host_pauses_total", "Times a host was paused (Retry-After or backoff)", ["host"])
RECORDS = Counter("taxonstream_fetch_records_total", "Records finished by the fetch engine", ["outcome", "reason"])

_known: set[str] = set()
_lock = threading.Lock()


def host_label(host: str) -> str:
    if host in _known:
        return host
    with _lock:
        if len(_known) < MAX_HOSTS:
            _known.add(host)
            return host
    return "other"
