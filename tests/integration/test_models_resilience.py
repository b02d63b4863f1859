"""Bad images end as failed records with reasons; Triton down makes the model stages wait, not fail."""

from __future__ import annotations

import io
import random
import time

from PIL import Image
from pipeline_helpers import outcomes, submit, unique_job, wait_done

from taxonstream.core.keys import derivative_keys, derivative_to_read
from taxonstream.v1 import fetcher_pb2
from taxonstream.v1.messages_pb2 import Outcome
from tools.stack import local_stack as stack


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_corrupt_tiny_and_huge_images_fail_with_reasons(fetcher, site, store):
    (site.directory / "bad").mkdir(exist_ok=True)
    good = site.images(1)[0]
    files = {
        "corrupt.jpg": good.read_bytes()[:200] + b"\x00" * 500,  # a JPEG header, then garbage
        # A colour of its own per run: the same bytes seen before would end as a duplicate instead.
        "one-pixel.png": _png(Image.new("RGB", (1, 1), tuple(random.SystemRandom().randrange(256) for _ in "rgb"))),
        "huge.png": _png(Image.new("1", (15000, 15000))),  # 225 Mpx, a few hundred KB on the wire
    }
    for name, data in files.items():
        (site.directory / "bad" / name).write_bytes(data)
    urls = [site.url("img", f"bad/{name}") for name in files] + [site.url("img", good)]
    job = unique_job("bad-images")
    submit(fetcher, job, urls)
    status = wait_done(fetcher, job, timeout=300)
    by_row = outcomes(fetcher, job)
    assert sorted(by_row) == [0, 1, 2, 3]
    assert [by_row[i].state for i in range(3)] == [Outcome.FAILED] * 3
    assert by_row[3].state == Outcome.INDEXED
    reasons = {name: (by_row[i].stage, by_row[i].reason) for i, name in enumerate(files)}
    assert reasons["one-pixel.png"] == ("detector", "image_too_small"), reasons
    assert reasons["huge.png"] == ("fetcher", "too_many_pixels"), reasons
    assert reasons["corrupt.jpg"][1] in {"truncated", "undecodable", "not_an_image", "undecodable_image"}, reasons
    assert all(len(by_row[i].message) > 10 for i in range(3))
    assert status.failed == 3
    # The good one has its derivatives and lineage under its image id and the detector's model version.
    image_id = by_row[3].image_id
    # Only derivatives that earn their bytes are stored (a demo-sized original stands in for its own crop
    # and small copies); the lineage says which, and every kind resolves to a readable object.
    keys = derivative_keys(image_id, "detector_standin", "1")
    lineage = store.get_json(keys["lineage"])
    assert lineage["original_size"] == list(Image.open(good).size)
    assert all(store.exists(keys[kind]) for kind in lineage["stored"])
    served = {kind: store.get(derivative_to_read(lineage, kind)) for kind in ("crop", "crop_small", "original_small")}
    assert min(Image.open(io.BytesIO(served["original_small"])).size) == min(256, *lineage["original_size"])


def test_triton_down_the_workers_wait_and_the_backlog_drains(fetcher, site):
    images = site.images(6)
    stopped = stack._script("triton", "stop").returncode == 0
    assert stopped
    try:
        job = unique_job("triton-down")
        submit(fetcher, job, [site.url("img", image) for image in images])
        # Long enough for every record to be fetched and verified and reach the detector many times over.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status = fetcher.GetJob(fetcher_pb2.GetJobRequest(job_id=job), timeout=30)
            assert status.failed == 0, f"a record failed while Triton was down: {status}"
            assert status.indexed == 0
            time.sleep(1)
    finally:
        assert stack._script("triton", "start").returncode == 0
    status = wait_done(fetcher, job, timeout=300)
    assert (status.indexed, status.failed) == (6, 0)
