"""The duplicate registry: one image per content with every source, near-duplicate policies, restarts from a
snapshot plus a replay of `verified` (a list of messages stands in for the topic)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from taxonstream.core.keys import REGISTRY_ENTRIES_PREFIX, REGISTRY_SNAPSHOT_PREFIX
from taxonstream.integrity.phash import phash_bytes
from taxonstream.integrity.registry import DirectoryStore, DuplicateRegistry
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
    # The first source rides in the entry (one PUT for a new image); the later one has its own object.
    assert store.list("provenance/") == [f"provenance/{sha}/idigbio-7.json"]
    sources = registry.sources(sha)
    assert [s["record_id"] for s in sources] == ["gbif-1", "idigbio-7"]
    assert {s["url"].split("/")[2] for s in sources} == {"gbif.example", "idigbio.example"}


class CountingStore(DirectoryStore):
    """Counts listings of the per-sha256 entries: a restore from snapshot + replay must make none."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.entry_listings = 0

    def list(self, prefix: str) -> list[str]:
        self.entry_listings += prefix.startswith(REGISTRY_ENTRIES_PREFIX)
        return super().list(prefix)


Message = tuple[int, int, str, int, str]  # (partition, offset, sha256, phash, image_id): a `verified` message


def _register(registry: DuplicateRegistry, topic: list[Message], data: bytes, record_id: str) -> None:
    """What the worker and the observer do: claim, put new images on the topic, observe them from it."""
    sha = hashlib.sha256(data).hexdigest()
    claim = registry.claim(sha, phash_bytes(data), _source(record_id, "a.example"))
    if claim.new_image:
        partition = int(sha, 16) % 3
        offset = sum(1 for m in topic if m[0] == partition)
        topic.append((partition, offset, sha, phash_bytes(data), claim.image_id))
        registry.observe(sha, phash_bytes(data), claim.image_id, at=(partition, offset))


def _replay(registry: DuplicateRegistry, topic: list[Message]) -> int:
    """The observer's start-up replay: every message at or after the offsets the snapshot includes."""
    after = [m for m in topic if m[1] >= registry.offsets.get(m[0], 0)]
    for partition, offset, sha, phash, image_id in after:
        registry.observe(sha, phash, image_id, at=(partition, offset))
    return len(after)


@pytest.mark.parametrize("policy", ["link", "keep"])
def test_snapshot_plus_replay_equals_the_full_state_without_listing_entries(tmp_path: Path, policy: str) -> None:
    topic: list[Message] = []
    live = DuplicateRegistry(DirectoryStore(tmp_path), policy=policy)
    for seed in range(103, 109):
        _register(live, topic, _jpeg(seed), f"r{seed}")
    live.save_snapshot()
    for seed in range(109, 113):  # after the snapshot: only on the topic
        _register(live, topic, _jpeg(seed), f"r{seed}")
    _register(live, topic, _jpeg(110, quality=60, size=(480, 360)), "r110-copy")  # a near duplicate, late too

    store = CountingStore(tmp_path)
    restarted = DuplicateRegistry(store, policy=policy)  # a new process: nothing in memory
    assert restarted.restored and len(restarted.index) == 6
    assert _replay(restarted, topic) == 5
    assert store.entry_listings == 0, "never a listing of registry/sha256/"
    assert sorted(restarted.index.items()) == sorted(live.index.items())
    assert restarted.offsets == live.offsets
    for probe in (_jpeg(104, quality=50), _jpeg(111, quality=55, size=(320, 240)), _jpeg(110, quality=70)):
        assert restarted.near_images(phash_bytes(probe)) == live.near_images(phash_bytes(probe))
    again = _claim(restarted, _jpeg(111), "r111-other-provider")  # exact: answered from its entry
    assert again.exact and again.duplicate_of == hashlib.sha256(_jpeg(111)).hexdigest()
    near = _claim(restarted, _jpeg(112, quality=65, size=(400, 300)), "r112-thumb")
    assert near.new_image and [image for image, _ in near.near][:1] == [hashlib.sha256(_jpeg(112)).hexdigest()]


def test_without_the_replay_a_restored_registry_misses_later_images(tmp_path: Path) -> None:
    """The replay is what brings them back (the check above would pass vacuously otherwise)."""
    topic: list[Message] = []
    live = DuplicateRegistry(DirectoryStore(tmp_path))
    _register(live, topic, _jpeg(103), "r103")
    live.save_snapshot()
    _register(live, topic, _jpeg(104), "r104")
    restarted = DuplicateRegistry(DirectoryStore(tmp_path))
    assert restarted.near_images(phash_bytes(_jpeg(104, quality=60))) == []
    _replay(restarted, topic)
    assert restarted.near_images(phash_bytes(_jpeg(104, quality=60)))[0][0] == hashlib.sha256(_jpeg(104)).hexdigest()


def test_registry_snapshots_are_bounded_and_a_damaged_one_falls_back(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    registry = DuplicateRegistry(store, snapshot_keep=2)
    topic: list[Message] = []
    for seed in range(103, 108):
        _register(registry, topic, _jpeg(seed), f"r{seed}")
        registry.save_snapshot()
    generations = {k.split("/")[-1].split(".")[0] for k in store.list(REGISTRY_SNAPSHOT_PREFIX + "snapshots/")}
    assert len(generations) == 2
    newest = max(generations)
    store.put(f"{REGISTRY_SNAPSHOT_PREFIX}snapshots/{newest}.index.bin", b"damaged")
    fallback = DuplicateRegistry(store)  # the checksum fails: the generation before it, then replay
    assert fallback.restored and len(fallback.index) == 4
    _replay(fallback, topic)
    assert sorted(fallback.index.items()) == sorted(registry.index.items())


def test_a_store_from_before_snapshot_generations_is_rebuilt_from_its_entries_once(tmp_path: Path) -> None:
    originals = {seed: _jpeg(seed) for seed in (103, 104, 105)}
    registry = DuplicateRegistry(DirectoryStore(tmp_path))
    for seed, data in originals.items():
        assert _claim(registry, data, f"r{seed}").new_image

    store = CountingStore(tmp_path)
    restarted = DuplicateRegistry(store)
    assert not restarted.restored and len(restarted.index) == 0 and store.entry_listings == 0
    assert restarted.rebuild_from_entries() == 3 and len(restarted.index) == 3
    resized = _jpeg(105, quality=70, size=(320, 240))  # re-encoded and resized: other bytes, same picture
    near = _claim(restarted, resized, "r105-thumb")
    assert near.new_image and [image for image, _ in near.near] == [hashlib.sha256(originals[105]).hexdigest()]
    restarted.save_snapshot()
    assert DuplicateRegistry(DirectoryStore(tmp_path)).restored  # from now on: snapshot + replay


def test_policy_link_records_the_link_both_ways(tmp_path: Path) -> None:
    registry = DuplicateRegistry(DirectoryStore(tmp_path), policy="link")
    original, copy = _jpeg(103), _jpeg(103, quality=60, size=(480, 360))
    _claim(registry, original, "r1")
    claim = _claim(registry, copy, "r2")
    a, b = hashlib.sha256(original).hexdigest(), hashlib.sha256(copy).hexdigest()
    assert claim.new_image and claim.near[0][0] == a
    assert [image for image, _ in registry.links(a)] == [b] and [image for image, _ in registry.links(b)] == [a]


@pytest.mark.parametrize("near_max", [3, 100])
def test_a_new_image_links_at_most_near_max_images_nearest_first(tmp_path: Path, near_max: int) -> None:
    registry = DuplicateRegistry(DirectoryStore(tmp_path), policy="link", near_max=near_max)
    copies = [_jpeg(103, quality=q, size=(640 - 40 * i, 480 - 30 * i)) for i, q in enumerate((95, 85, 75, 65, 55, 45))]
    for n, data in enumerate(copies):
        _claim(registry, data, f"r{n}")
    newest = _jpeg(103, quality=35, size=(400, 300))
    claim = _claim(registry, newest, "r-last")
    linked = min(near_max, len(copies))
    assert len(claim.near) == linked and [d for _, d in claim.near] == sorted(d for _, d in claim.near)
    assert len(registry.links(hashlib.sha256(newest).hexdigest())) == linked


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
    registry.save_snapshot()
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
