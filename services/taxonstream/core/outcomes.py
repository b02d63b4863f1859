"""Builders for the one terminal state every record ends in."""

from __future__ import annotations

import time

from google.protobuf.message import Message

from taxonstream.core.bus import Emit
from taxonstream.core.metrics import OUTCOMES
from taxonstream.core.topics import Topics
from taxonstream.v1.messages_pb2 import Outcome, Record


def outcome(
    topics: Topics,
    record: Record,
    state: Outcome.State.ValueType,
    *,
    stage: str,
    image_id: str = "",
    reason: str = "",
    message: str = "",
) -> Emit:
    OUTCOMES.labels(stage, Outcome.State.Name(state).lower(), reason).inc()
    return Emit(
        topics.outcomes,
        record.record_id,
        Outcome(
            record_id=record.record_id,
            job_id=record.job_id,
            url=record.url,
            state=state,
            image_id=image_id,
            stage=stage if state == Outcome.FAILED else "",
            reason=reason,
            message=message,
            at_ms=int(time.time() * 1000),
        ),
    )


def record_in(message: Message) -> Record | None:
    """The record a topic message carries somewhere in its lineage (every stage's message embeds it)."""
    if isinstance(message, Record):
        return message if message.record_id else None
    for field, value in message.ListFields():
        if field.message_type is not None and not field.is_repeated:
            found = record_in(value)
            if found is not None:
                return found
    return None


def failed(topics: Topics, record: Record, stage: str, reason: str, message: str) -> Emit:
    return outcome(topics, record, Outcome.FAILED, stage=stage, reason=reason, message=message)
