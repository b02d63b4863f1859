"""Strict decoding is what lets workers dead-letter bad messages instead of mis-reading them."""

from __future__ import annotations

import pytest

from taxonstream.core.bus import TYPE_HEADER, decode
from taxonstream.core.errors import Poison
from taxonstream.v1.messages_pb2 import Crop, FetchedImage, Job, Record


def header(message_type) -> list[tuple[str, bytes]]:
    return [(TYPE_HEADER, message_type.DESCRIPTOR.full_name.encode())]


def test_a_valid_message_round_trips():
    record = Record(record_id="j:1", job_id="j", row=1, url="http://example.org/a.jpg", metadata={"genus": "Apis"})
    assert decode(record.SerializeToString(), header(Record), Record) == record


def test_garbage_bytes_are_poison():
    with pytest.raises(Poison) as caught:
        decode(b"\xff\xfe\x00garbage\x99", None, Record)
    assert caught.value.reason in {"undecodable", "wrong_type"}


def test_declared_wrong_type_is_poison():
    job = Job(job_id="j", total=3)
    with pytest.raises(Poison) as caught:
        decode(job.SerializeToString(), header(Job), Record)
    assert caught.value.reason == "wrong_type"
    assert "taxonstream.v1.Job" in caught.value.detail


def test_undeclared_other_type_is_caught_by_its_foreign_fields():
    crop = Crop(image_id="abc", crop_key="k", score=0.5, model="m", model_version="1")
    with pytest.raises(Poison) as caught:
        decode(crop.SerializeToString(), None, FetchedImage)
    assert caught.value.reason in {"wrong_type", "undecodable"}


def test_empty_value_is_poison():
    with pytest.raises(Poison) as caught:
        decode(b"", header(Record), Record)
    assert caught.value.reason == "empty"


def test_the_record_is_found_in_every_stage_message():
    from taxonstream.core.outcomes import record_in
    from taxonstream.v1.messages_pb2 import Embedding, VerifiedImage

    record = Record(record_id="j:7", job_id="j", url="http://example.org/a.jpg")
    fetched = FetchedImage(record=record, sha256="ab")
    verified = VerifiedImage(image_id="ab", fetched=fetched)
    crop = Crop(image_id="ab", image=verified)
    for message in [record, fetched, verified, crop, Embedding(image_id="ab", crop=crop)]:
        assert record_in(message) == record
    assert record_in(Crop(image_id="ab")) is None
    assert record_in(Job(job_id="j")) is None
