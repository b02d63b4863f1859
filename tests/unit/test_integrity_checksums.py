"""Algorithm rules (sum-buddy's), digests against hashlib, and the worker pool's order and error handling."""

from __future__ import annotations

import hashlib
import io
import random
import zipfile
from pathlib import Path

import pytest

from taxonstream.integrity.checksums import (
    BATCH_BYTES,
    BATCH_ITEMS,
    BUFFER_SIZE,
    Algorithm,
    ChecksumError,
    Item,
    Unit,
    WorkerPool,
    _batches,
    _digest_batch,
    available_cpus,
    digest_bytes,
    digest_items,
    digest_stream,
    parse_algorithms,
)


def test_algorithm_rules_follow_sum_buddy() -> None:
    assert Algorithm.parse("md5") == Algorithm("md5")
    assert Algorithm.parse("shake_256", 16).length == 16
    assert Algorithm.parse("blake2b", 0).length is None  # 0 means "the default size", as in sum-buddy
    with pytest.raises(ChecksumError, match="required"):
        Algorithm.parse("shake_128")
    with pytest.raises(ChecksumError, match="not applicable for fixed-length"):
        Algorithm.parse("sha256", 16)
    with pytest.raises(ChecksumError, match="Unsupported algorithm 'MD5'"):
        Algorithm.parse("MD5")  # hashlib names are case-sensitive in sum-buddy too
    with pytest.raises(ChecksumError, match="1..32"):
        Algorithm.parse("blake2s", 33)


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        (Algorithm("sha256"), lambda d: hashlib.sha256(d).hexdigest()),
        (Algorithm("shake_128", 20), lambda d: hashlib.shake_128(d).hexdigest(20)),
        (Algorithm("blake2b", 20), lambda d: hashlib.blake2b(d, digest_size=20).hexdigest()),
        (Algorithm("blake2s"), lambda d: hashlib.blake2s(d).hexdigest()),
    ],
)
def test_digests_equal_hashlib_across_buffer_boundaries(algorithm: Algorithm, expected) -> None:
    data = random.Random(1).randbytes(BUFFER_SIZE * 2 + 123)
    assert digest_bytes(data, [algorithm]) == {algorithm.name: expected(data)}
    result = digest_stream(io.BytesIO(data), [algorithm, Algorithm("md5")])
    assert result.digests == {algorithm.name: expected(data), "md5": hashlib.md5(data).hexdigest()}
    assert result.size == len(data)


def test_parse_algorithms_gives_shake_a_sha256_strength_length() -> None:
    assert [a.length for a in parse_algorithms(["md5", "shake_256"])] == [None, 32]


def _files(root: Path, count: int) -> tuple[list[Item], list[int], list[str]]:
    rng = random.Random(count)
    items, sizes, md5s = [], [], []
    for n in range(count):
        data = rng.randbytes(rng.choice([0, 10, 4096, 300_000, BUFFER_SIZE + 1]))
        path = root / f"f{n:03d}"
        path.write_bytes(data)
        items.append(Item(str(path)))
        sizes.append(len(data))
        md5s.append(hashlib.md5(data).hexdigest())
    return items, sizes, md5s


@pytest.mark.parametrize("backend", ["process", "thread", "serial"])
def test_every_backend_returns_results_in_input_order(tmp_path: Path, backend: str) -> None:
    items, sizes, md5s = _files(tmp_path, 300)
    work = (Unit(item, size) for item, size in zip(items, sizes, strict=True))  # a generator, like a walk
    with WorkerPool(2, backend) as pool:  # type: ignore[arg-type]
        # serial_below=0: use the pool even for these few bytes
        got = list(pool.map_batches(_digest_batch, work, (Algorithm("md5"),)))
    assert [unit.item for unit, _ in got] == items
    assert [result.digests["md5"] for _, result in got] == md5s


def test_an_unreadable_item_is_reported_and_the_rest_still_hashed(tmp_path: Path) -> None:
    items, sizes, md5s = _files(tmp_path, 5)
    items.insert(2, Item(str(tmp_path / "missing")))
    sizes.insert(2, 0)
    got = list(digest_items(items, [Algorithm("md5")], sizes))
    assert got[2].error and "missing" in got[2].error
    assert [g.digests["md5"] for i, g in enumerate(got) if i != 2] == md5s


def test_zip_members_are_read_decompressed_by_name(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as handle:
        handle.writestr("x/one.txt", b"one" * 1000)
        handle.writestr("two.bin", b"\x00" * 5)
    got = list(
        digest_items(
            [Item(str(archive), "x/one.txt"), Item(str(archive), "two.bin"), Item(str(archive), "absent")],
            [Algorithm("sha1")],
        )
    )
    assert got[0].digests["sha1"] == hashlib.sha1(b"one" * 1000).hexdigest() and got[0].size == 3000
    assert got[1].digests["sha1"] == hashlib.sha1(b"\x00" * 5).hexdigest()
    assert got[2].error and "absent" in got[2].error


def test_batches_cover_every_item_once_in_order_and_bounded() -> None:
    sizes = [random.Random(n).choice([0, 10, 50_000, 3_000_000, 9_000_000]) for n in range(2000)]
    units = [Unit(Item(str(n)), size) for n, size in enumerate(sizes)]
    batches = list(_batches(iter(units)))
    assert [u for b in batches for u in b] == units
    assert all(len(b) <= BATCH_ITEMS for b in batches)
    # A batch closes as soon as it reaches BATCH_BYTES: only its last unit can take it past that.
    assert all(sum(u.size for u in b[:-1]) < BATCH_BYTES for b in batches)


def test_small_work_runs_without_starting_workers(tmp_path: Path) -> None:
    items, sizes, md5s = _files(tmp_path, 10)
    pool = WorkerPool(2, "thread")
    with pool:
        got = list(
            pool.map_batches(
                _digest_batch,
                [Unit(i, s) for i, s in zip(items, sizes, strict=True)],
                (Algorithm("md5"),),
                serial_below=1 << 40,
            )
        )
        assert pool._pool is None  # no executor was created
    assert [r.digests["md5"] for _, r in got] == md5s


def test_available_cpus_is_at_least_one() -> None:
    assert 1 <= available_cpus() <= 4096
