"""Integrity in the stream: buddy-checks, near duplicates linked, and a registry that survives a restart."""

from __future__ import annotations

import hashlib

from PIL import Image
from pipeline_helpers import outcomes, submit, unique_job, wait_done

from taxonstream.v1 import checksummer_pb2
from taxonstream.v1.messages_pb2 import Outcome
from tools.stack import local_stack as stack

CHECKSUMMER = next(s for s in stack.SERVICES if s.name == "checksummer")


def test_expected_checksums_are_verified(fetcher, site):
    good, bad = site.images(2)
    good_md5 = hashlib.md5(good.read_bytes()).hexdigest()
    bad_md5 = hashlib.md5(bad.read_bytes()).hexdigest()
    wrong = "0" * 32
    job = unique_job("buddy")
    submit(fetcher, job, [site.url("img", good), site.url("img", bad)], [{"md5": good_md5}, {"md5": wrong}])
    wait_done(fetcher, job, timeout=300)
    ended = outcomes(fetcher, job)
    assert ended[0].state == Outcome.INDEXED
    assert (ended[1].state, ended[1].stage, ended[1].reason) == (Outcome.FAILED, "checksummer", "checksum_mismatch")
    assert wrong in ended[1].message and bad_md5 in ended[1].message, "expected and actual are both reported"


def test_near_duplicates_are_linked_and_unrelated_images_are_not(fetcher, checksummer, site):
    original, unrelated = site.hashable_images(2)
    with Image.open(original) as image:
        rgb = image.convert("RGB")
        reencoded = original.with_name(original.stem + "-q60.jpg")
        rgb.save(reencoded, format="JPEG", quality=60)
        resized = original.with_name(original.stem + "-small.png")
        rgb.resize((rgb.width * 3 // 4, rgb.height * 3 // 4)).save(resized, format="PNG")
    job = unique_job("near")
    submit(fetcher, job, [site.url("img", p) for p in (original, reencoded, resized, unrelated)])
    wait_done(fetcher, job, timeout=300)
    ended = outcomes(fetcher, job)
    assert [o.state for o in ended.values()] == [Outcome.INDEXED] * 4, "policy 'link' keeps each as an image"

    original_id = hashlib.sha256(original.read_bytes()).hexdigest()
    for copy in (reencoded, resized):
        request = checksummer_pb2.FindDuplicatesRequest(image=copy.read_bytes())
        near = checksummer.FindDuplicates(request, timeout=30).near
        assert original_id in {n.image_id for n in near}, copy.name
    request = checksummer_pb2.FindDuplicatesRequest(image=unrelated.read_bytes())
    assert original_id not in {n.image_id for n in checksummer.FindDuplicates(request, timeout=30).near}


def test_the_duplicate_registry_survives_a_restart(fetcher, checksummer, site):
    (image,) = site.images(1)
    first = unique_job("registry-before")
    submit(fetcher, first, [site.url("img", image)])
    assert wait_done(fetcher, first, timeout=300).indexed == 1

    stack.stop_service("checksummer")
    stack.start_service(CHECKSUMMER)

    second = unique_job("registry-after")
    submit(fetcher, second, [site.url("img", image) + "?provider=other"])
    status = wait_done(fetcher, second, timeout=300)
    assert (status.indexed, status.duplicate) == (0, 1)
    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    found = checksummer.FindDuplicates(checksummer_pb2.FindDuplicatesRequest(sha256=sha), timeout=30)
    assert found.image_id == sha and len(found.record_ids) == 2, "one image, a provenance entry per source"


def test_buddy_check_of_stored_objects(checksummer, fetcher, site):
    (image,) = site.images(1)
    job = unique_job("buddy-rpc")
    submit(fetcher, job, [site.url("img", image)])
    wait_done(fetcher, job, timeout=300)
    data = image.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    rows = [
        checksummer_pb2.ExpectedChecksums(name="right", sha256=sha, expected={"md5": hashlib.md5(data).hexdigest()}),
        checksummer_pb2.ExpectedChecksums(name="wrong", sha256=sha, expected={"sha1": "1" * 40}),
        checksummer_pb2.ExpectedChecksums(name="absent", sha256="f" * 64, expected={"md5": "0" * 32}),
    ]
    response = checksummer.BuddyCheck(checksummer_pb2.BuddyCheckRequest(rows=rows), timeout=30)
    assert [(r.name, r.ok) for r in response.results] == [("right", True), ("wrong", False), ("absent", False)]
    assert (response.mismatched, response.missing) == (1, 1)
    assert hashlib.sha1(data).hexdigest() in response.results[1].problem
