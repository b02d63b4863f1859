"""Prometheus metrics shared by every service, served on their own port."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

MESSAGES = Counter("taxonstream_messages_total", "Messages a worker finished, by result", ["stage", "result"])
BATCH_SECONDS = Histogram("taxonstream_batch_seconds", "Time to process one polled batch, outputs flushed", ["stage"])
DEAD_LETTERS = Counter("taxonstream_dead_letters_total", "Messages sent to a dead-letter topic", ["stage", "reason"])
OUTCOMES = Counter("taxonstream_outcomes_total", "Terminal record states emitted", ["stage", "state", "reason"])
RETRIES = Counter("taxonstream_retries_total", "Batches retried after a transient error", ["stage"])
GRPC_SECONDS = Histogram("taxonstream_grpc_seconds", "gRPC handling time", ["method", "code"])


def serve(host: str, port: int) -> None:
    start_http_server(port, addr=host)
