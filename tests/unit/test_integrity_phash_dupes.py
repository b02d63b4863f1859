"""pHash finds re-encoded and resized copies and not unrelated images; `taxonstream dupes` groups a folder."""

from __future__ import annotations

import csv
import io
import os
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import imagehash
import pytest
from PIL import Image

from taxonstream.integrity.dupes import find_duplicates
from taxonstream.integrity.neardup import HammingIndex
from taxonstream.integrity.phash import (
    FlatImage,
    ImageUnreadable,
    from_hex,
    hamming,
    phash_bytes,
    phash_image,
    to_hex,
)
from taxonstream.integrity.sumbuddy import plan
from taxonstream.models.synthetic import near_duplicate, shapes_image


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


THRESHOLD = 8


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def original() -> Image.Image:
    return shapes_image(103, size=(800, 600), max_shapes=10)


def test_re_encoded_and_resized_copies_are_near_and_an_unrelated_image_is_not(original: Image.Image) -> None:
    base = phash_bytes(_encode(original, "PNG"))
    copies = {
        "jpeg q70": _encode(original, "JPEG", quality=70),
        "webp q60": _encode(original, "WEBP", quality=60),
        "half size": _encode(original.resize((400, 300), Image.Resampling.LANCZOS), "PNG"),
        "double size jpeg": _encode(original.resize((1600, 1200)), "JPEG", quality=85),
        "re-upload": _encode(near_duplicate(original, seed=3), "JPEG", quality=80),
    }
    distances = {name: hamming(base, phash_bytes(data)) for name, data in copies.items()}
    assert all(d <= THRESHOLD for d in distances.values()), distances
    unrelated = [phash_bytes(_encode(shapes_image(seed, size=(800, 600), max_shapes=10), "PNG")) for seed in (7, 8, 9)]
    assert all(hamming(base, u) > THRESHOLD + 4 for u in unrelated), [hamming(base, u) for u in unrelated]

    index = HammingIndex.build(
        [("original", base), *((f"unrelated{n}", u) for n, u in enumerate(unrelated))], max_distance=THRESHOLD
    )
    for data in copies.values():
        assert [k for k, _ in index.query(phash_bytes(data))] == ["original"]


def test_copies_are_found_and_strangers_kept_apart_across_many_images() -> None:
    """Rates over 30 images, since pHash has rare unstable images (flat ones with coefficients near the median:
    in 100 synthetic images, one WebP and one JPEG q50 copy landed 20+ bits away)."""
    originals = [shapes_image(seed, size=(400, 300), max_shapes=10) for seed in range(200, 230)]
    hashes = [phash_image(image) for image in originals]
    found = {"jpeg q50": 0, "webp q60": 0, "half size": 0, "re-upload": 0}
    for seed, (image, base) in enumerate(zip(originals, hashes, strict=True)):
        copies = {
            "jpeg q50": _encode(image, "JPEG", quality=50),
            "webp q60": _encode(image, "WEBP", quality=60),
            "half size": _encode(image.resize((200, 150), Image.Resampling.LANCZOS), "PNG"),
            "re-upload": _encode(near_duplicate(image, seed), "JPEG", quality=80),
        }
        for name, data in copies.items():
            found[name] += hamming(base, phash_bytes(data)) <= THRESHOLD
    assert all(count >= 27 for count in found.values()), found  # ≥ 90% of copies found
    index = HammingIndex.build(((str(n), h) for n, h in enumerate(hashes)), max_distance=THRESHOLD)
    assert list(index.near_pairs()) == []  # no two different images confused


def test_the_hash_is_imagehash_phash_for_images_decoded_in_full(original: Image.Image) -> None:
    png = _encode(original, "PNG")  # not JPEG, so decoded in full
    assert to_hex(phash_bytes(png)) == str(imagehash.phash(Image.open(io.BytesIO(png))))
    assert phash_image(original) == from_hex(str(imagehash.phash(original)))


def test_reduced_jpeg_decoding_moves_the_hash_by_no_more_than_a_few_bits() -> None:
    big = shapes_image(5, size=(3000, 2000), max_shapes=10)
    data = _encode(big, "JPEG", quality=90)
    full = from_hex(str(imagehash.phash(Image.open(io.BytesIO(data)))))
    assert hamming(phash_bytes(data), full) <= 4


def test_exif_orientation_is_applied_before_hashing(original: Image.Image) -> None:
    rotated = original.rotate(90, expand=True)  # pixels turned a quarter counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": shows the original again
    tagged = _encode(rotated, "JPEG", quality=90, exif=exif.tobytes())
    untagged = _encode(rotated, "JPEG", quality=90)
    base = phash_image(original)
    assert hamming(base, phash_bytes(tagged)) <= 4
    assert hamming(base, phash_bytes(untagged)) > THRESHOLD  # the test would prove nothing otherwise


def test_non_images_are_refused_and_hex_round_trips() -> None:
    with pytest.raises(ImageUnreadable):
        phash_bytes(b"<html>not an image</html>")
    with pytest.raises(ImageUnreadable):
        phash_bytes(_encode(shapes_image(1), "PNG")[:200])  # truncated
    assert from_hex(to_hex(0x0123456789ABCDEF)) == 0x0123456789ABCDEF and to_hex(1) == "0000000000000001"
    with pytest.raises(ValueError):
        from_hex("1" * 17)


@pytest.fixture
def folder(tmp_path: Path, original: Image.Image) -> Path:
    root = tmp_path / "photos"
    (root / "provider-b").mkdir(parents=True)
    png = _encode(original, "PNG")
    (root / "specimen.png").write_bytes(png)
    (root / "provider-b" / "same-bytes.png").write_bytes(png)  # exact copy from another provider
    (root / "reencoded.jpg").write_bytes(_encode(original, "JPEG", quality=70))
    (root / "provider-b" / "thumb.png").write_bytes(_encode(original.resize((320, 240)), "PNG"))
    (root / "unrelated.png").write_bytes(_encode(shapes_image(7, size=(800, 600), max_shapes=10), "PNG"))
    (root / "notes.txt").write_text("field notes")
    (root / "provider-b" / "notes-copy.txt").write_text("field notes")
    (root / ".hidden.png").write_bytes(png)  # skipped, as sum-buddy skips hidden files
    with zipfile.ZipFile(root / "batch.zip", "w") as archive:
        archive.writestr("inside/specimen.png", png)
    return root


def test_find_duplicates_groups_exact_and_near_copies(folder: Path) -> None:
    report = find_duplicates(plan(str(folder)), max_distance=THRESHOLD, workers=2)
    root = str(folder)
    exact = {frozenset(p.removeprefix(root + "/") for p in image.paths) for image in report.exact}
    assert exact == {
        frozenset({"specimen.png", "provider-b/same-bytes.png", "batch.zip/inside/specimen.png"}),
        frozenset({"notes.txt", "provider-b/notes-copy.txt"}),
    }
    assert len(report.near) == 1
    near = {image.paths[0].removeprefix(root + "/") for image in report.near[0].images}
    assert {"reencoded.jpg", "provider-b/thumb.png"} <= near and "unrelated.png" not in near
    assert len(near) == 3  # the specimen, shown by one of its three paths
    assert all(d <= THRESHOLD for _, _, d in report.near[0].pairs)
    assert sorted(Path(p).name for p in report.not_images) == ["batch.zip", "notes-copy.txt", "notes.txt"]
    assert not report.errors and report.files == 9  # batch.zip itself and its member both count


def test_dupes_command_prints_and_writes_the_groups(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "groups.csv"
    result = subprocess.run(
        [sys.executable, "-m", "taxonstream.cli.main", "dupes", str(folder), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "exact duplicates: 2 groups, 5 files" in result.stdout
    assert "near duplicates (pHash within 8 bits): 1 groups" in result.stdout
    rows = list(csv.DictReader(out.open()))
    near = {Path(r["filepath"]).name for r in rows if r["kind"] == "near"}
    assert {"reencoded.jpg", "thumb.png", "specimen.png"} <= near and "unrelated.png" not in near

    strict = subprocess.run(
        [sys.executable, "-m", "taxonstream.cli.main", "dupes", str(folder), "--max-distance", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "exact duplicates: 2 groups" in strict.stdout
    # Not a path: a job id, looked up in the checksummer (unknown there, or no stack running here).
    env = {**os.environ, "TAXONSTREAM_CHECKSUMMER_ADDR": f"127.0.0.1:{closed_port()}"}
    missing = subprocess.run(
        [sys.executable, "-m", "taxonstream.cli.main", "dupes", "job-1234"], capture_output=True, text=True, env=env
    )
    assert missing.returncode == 1 and "job-1234: no such file or directory, and no checksummer" in missing.stderr


def test_featureless_images_get_no_phash_and_are_not_near_duplicates_of_each_other(tmp_path: Path) -> None:
    """Flat pictures all hash to 8000000000000000 under pHash: without the check, a black frame, a white
    placeholder and shapes that differ from their background only in hue were all "near duplicates"."""
    hue_only = Image.new("RGB", (320, 240), (200, 0, 0))
    # Same luminance (L = 0.299 R + 0.587 G + 0.114 B) as the background, another hue.
    hue_only.paste((0, 102, 0), (40, 40, 200, 160))
    flat = {"black": Image.new("RGB", (640, 480)), "white": Image.new("RGB", (320, 240), "white"), "hue": hue_only}
    for name, image in flat.items():
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=75)
        (tmp_path / f"{name}.jpg").write_bytes(buffer.getvalue())
        with pytest.raises(FlatImage):
            phash_bytes(buffer.getvalue())
    (tmp_path / "black-copy.jpg").write_bytes((tmp_path / "black.jpg").read_bytes())
    shapes_image(7).save(tmp_path / "shapes.png")
    phash_bytes((tmp_path / "shapes.png").read_bytes())  # an ordinary picture still hashes
    report = find_duplicates(plan(str(tmp_path)), max_distance=8, workers=1)
    assert report.near == [], "no near group of featureless images"
    assert [len(i.paths) for i in report.exact] == [2], "flat copies are still exact duplicates"
    assert len(report.not_images) == 4
