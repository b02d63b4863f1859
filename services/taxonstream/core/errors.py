"""The ways a message can fail or wait (and what the worker does with each), and the ways a request can be refused."""

from __future__ import annotations


class Poison(Exception):
    """The message itself cannot be processed: dead-lettered with this reason, the worker moves on."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Failed(Exception):
    """The record cannot go on: it ends as failed(stage, reason) with a message a person can read."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class Transient(Exception):
    """A dependency (S3, Triton, Kafka) is unavailable: nothing is committed and the batch is retried."""


class Deferred(Exception):
    """Not yet: the message may be done at `until` (epoch seconds), e.g. when a throttling host's pause ends.

    Unlike Transient, only the message's partition waits: the worker pauses it there (nothing after it is
    committed) and resumes it at `until`, while the other partitions keep flowing.
    """

    def __init__(self, until: float, reason: str) -> None:
        super().__init__(f"{reason} (until {until:.0f})")
        self.until = until
        self.reason = reason


# What a request (an RPC) can be refused for; core/server.py's interceptor answers each with its status code.


class InvalidArgument(Exception):
    """The request itself is wrong (a missing field, an unknown name): asking again the same way will not help."""


class NotFound(Exception):
    """The request names something (a job, an object, an image, an index version) that does not exist."""


class FailedPrecondition(Exception):
    """The request is well formed but the system is not in a state to answer it (a model not installed)."""
