"""The duplicate registry: one image per content with every source, near-duplicate policies, restarts."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from taxonstream.integrity.phash import phash_bytes
from taxonstream.integrity.registry import SNAPSHOT_INDEX, DirectoryStore, DuplicateRegistry
from taxonstream.models.synthetic import shapes_image


def _jpeg(seed: int, quality: int = 90, size: tuple[int, int] = (640, 480)) -> bytes:
    buffer = io.BytesIO()
    shapes_image(seed, size=(640, 480), max_shapes=10).resize(size).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _source(record_id: str, provider: str) -> dict[str, str]:
    return {
        "record_id": record_id,
        "job_id": "job-1",
        "url": f"https://{provider}/media/{record_id}.jpg",
        "license": "CC BY 4.0",
    }


def _claim(registry: DuplicateRegistry, data: bytes, record_id: str, provider: str = "a.example"):
    return registry.claim(hashlib.sha256(data).hexdigest(), phash_bytes(data), _source(record_id, provider))


def test_the_same_bytes_from_two_providers_are_one_image_with_two_provenance_entries(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    registry = DuplicateRegistry(store)
    data = _jpeg(103)
    sha = hashlib.sha256(data).hexdigest()
    first = _claim(registry, data, "gbif-1", "gbif.example")
    second = _claim(registry, data, "idigbio-7", "idigbio.example")
    assert first.new_image and first.image_id == sha
    assert second.duplicate_of == sha and second.exact and not second.new_image
    assert store.list("registry/sha256/") == [f"registry/sha256/{sha[:2]}/{sha}.json"]  # stored once
    sources = registry.sources(sha)
    assert [s["record_id"] for s in sources] == ["gbif-1", "idigbio-7"]
    assert {s["url"].split("/")[2] for s in sources} == {"gbif.example", "idigbio.example"}


def test_a_restart_keeps_exact_and_near_duplicates(tmp_path: Path) -> None:
    originals = {seed: _jpeg(seed) for seed in (103, 104, 105)}
    registry = DuplicateRegistry(DirectoryStore(tmp_path))
    for seed, data in originals.items():
        assert _claim(registry, data, f"r{seed}").new_image

    restarted = DuplicateRegistry(DirectoryStore(tmp_path))  # a new process: nothing in memory
    assert restarted.rebuilt_from_entries == 3 and len(restarted.index) == 3
    again = _claim(restarted, originals[104], "r104-other-provider")
    assert again.exact and again.duplicate_of == hashlib.sha256(originals[104]).hexdigest()
    resized = _jpeg(105, quality=70, size=(320, 240))  # re-encoded and resized: other bytes, same picture
    near = _claim(restarted, resized, "r105-thumb")
    assert near.new_image  # default policy "link": its own image, linked
    assert [image for image, _ in near.near] == [hashlib.sha256(originals[105]).hexdigest()]


def test_a_snapshot_is_used_and_entries_after_it_are_still_found(tmp_path: Path) -> None:
    registry = DuplicateRegistry(DirectoryStore(tmp_path))
    for seed in (103, 104):
        _claim(registry, _jpeg(seed), f"r{seed}")
    registry.save_snapshot()
    late = _jpeg(105)
    _claim(registry, late, "r105")  # after the snapshot

    restarted = DuplicateRegistry(DirectoryStore(tmp_path))
    assert restarted.rebuilt_from_entries == 1 and len(restarted.index) == 3
    assert restarted.near_images(phash_bytes(_jpeg(105, quality=60)))[0][0] == hashlib.sha256(late).hexdigest()

    DirectoryStore(tmp_path).put(SNAPSHOT_INDEX, b"damaged")
    fallback = DuplicateRegistry(DirectoryStore(tmp_path))  # checksum fails: every entry is read instead
    assert fallback.rebuilt_from_entries == 3 and len(fallback.index) == 3


def test_policy_link_records_the_link_both_ways(tmp_path: Path) -> None:
    registry = DuplicateRegistry(DirectoryStore(tmp_path), policy="link")
    original, copy = _jpeg(103), _jpeg(103, quality=60, size=(480, 360))
    _claim(registry, original, "r1")
    claim = _claim(registry, copy, "r2")
    a, b = hashlib.sha256(original).hexdigest(), hashlib.sha256(copy).hexdigest()
    assert claim.new_image and claim.near[0][0] == a
    assert [image for image, _ in registry.links(a)] == [b] and [image for image, _ in registry.links(b)] == [a]


def test_policy_keep_reports_without_linking(tmp_path: Path) -> None:
    registry = DuplicateRegistry(DirectoryStore(tmp_path), policy="keep")
    _claim(registry, _jpeg(103), "r1")
    claim = _claim(registry, _jpeg(103, quality=60), "r2")
    assert claim.new_image and claim.near and registry.links(claim.image_id) == []


def test_policy_drop_makes_the_copy_a_duplicate_and_does_not_chain(tmp_path: Path) -> None:
    registry = DuplicateRegistry(DirectoryStore(tmp_path), policy="drop", max_distance=8)
    original = _jpeg(103)
    kept = hashlib.sha256(original).hexdigest()
    _claim(registry, original, "r1")
    copy = _jpeg(103, quality=60, size=(480, 360))
    dropped = _claim(registry, copy, "r2")
    assert dropped.duplicate_of == kept and not dropped.exact and dropped.image_id == kept
    assert [s["record_id"] for s in registry.sources(kept)] == ["r1", "r2"]
    # The dropped copy's bytes arriving again map straight to the kept image.
    assert _claim(registry, copy, "r3").duplicate_of == kept
    copy_sha = hashlib.sha256(copy).hexdigest()
    assert registry.aliases == {copy_sha: kept}
    assert DuplicateRegistry(DirectoryStore(tmp_path), policy="drop").aliases == {copy_sha: kept}  # restarted


def test_policy_drop_does_not_chain_through_a_dropped_copy(tmp_path: Path) -> None:
    registry = DuplicateRegistry(DirectoryStore(tmp_path), policy="drop", max_distance=8)
    base = 0x0123456789ABCDEF
    step1, step2 = base ^ 0b111111, base ^ 0b111111 ^ (0b111111 << 20)  # 6 bits from base, then 6 more
    assert registry.claim("a" * 64, base, {"record_id": "r1"}).new_image
    assert registry.claim("b" * 64, step1, {"record_id": "r2"}).duplicate_of == "a" * 64
    # step2 is 6 bits from the dropped copy but 12 from the kept image: a new image, not a drifted duplicate.
    third = registry.claim("c" * 64, step2, {"record_id": "r3"})
    assert third.new_image and third.near == []


def test_a_redelivered_record_gets_the_same_answer_and_no_second_provenance(tmp_path: Path) -> None:
    registry = DuplicateRegistry(DirectoryStore(tmp_path), policy="drop")
    original, copy = _jpeg(103), _jpeg(103, quality=60)
    first = _claim(registry, original, "r1")
    assert _claim(registry, original, "r1") == first
    dropped = _claim(registry, copy, "r2")
    assert _claim(registry, copy, "r2") == dropped
    assert len(registry.sources(first.image_id)) == 2


def test_bad_settings_and_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="policy"):
        DuplicateRegistry(DirectoryStore(tmp_path), policy="merge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="leaves the store"):
        DirectoryStore(tmp_path / "store").put("../outside.json", b"{}")
    assert DirectoryStore(tmp_path / "nothing").list("registry/") == []
