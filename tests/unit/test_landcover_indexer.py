"""The indexer worker with a land-cover raster: records with coordinates reach the index with their shares."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("rasterio")

from affine import Affine  # noqa: E402

from taxonstream.core.errors import Transient  # noqa: E402
from taxonstream.core.topics import Topics  # noqa: E402
from taxonstream.index.comparisons import Numeric  # noqa: E402
from taxonstream.index.versions import VersionKey  # noqa: E402
from taxonstream.indexer.worker import IndexerSettings, IndexWorker  # noqa: E402
from taxonstream.integrity.registry import DirectoryStore  # noqa: E402
from taxonstream.landcover.crosswalk import REASON_COLUMN, SHARE_COLUMNS  # noqa: E402
from taxonstream.landcover.source import LandCover, local_copy  # noqa: E402
from taxonstream.v1.messages_pb2 import Crop, Embedding, FetchedImage, Record, VerifiedImage  # noqa: E402

KEY = VersionKey("clip_a_image", "1")
FOREST_X, FOREST_Y = 1_200_000.0, 1_900_000.0  # the raster's top-left corner (EPSG:5070)


def forest_raster(path: Path) -> str:
    """Deciduous forest (141) on the west half, open water (111) on the east: 400 × 400 cells of 30 m."""
    import rasterio

    data = np.full((400, 400), 141, dtype=np.uint8)
    data[:, 200:] = 111
    profile = dict(driver="GTiff", width=400, height=400, count=1, dtype="uint8", crs="EPSG:5070", nodata=0)
    with rasterio.open(path, "w", transform=Affine(30, 0, FOREST_X, 0, -30, FOREST_Y), **profile) as out:
        out.write(data, 1)
    return str(path)


def in_forest() -> tuple[str, str]:
    from pyproj import Transformer

    lon, lat = Transformer.from_crs("EPSG:5070", "EPSG:4326", always_xy=True).transform(
        FOREST_X + 170 * 30.0, FOREST_Y - 200 * 30.0
    )
    return f"{lat:.7f}", f"{lon:.7f}"


def embedding(image_id: str, metadata: dict[str, str]) -> Embedding:
    v = np.random.default_rng(len(image_id)).normal(size=8).astype(np.float32)
    record = Record(record_id=f"job:{image_id}", job_id="job", url=f"http://x/{image_id}.jpg", metadata=metadata)
    crop = Crop(
        image_id=image_id,
        crop_key=f"derivatives/{image_id}/crop.jpg",
        image=VerifiedImage(image_id=image_id, fetched=FetchedImage(record=record, sha256=image_id)),
    )
    return Embedding(image_id=image_id, vector=(v / np.linalg.norm(v)).tolist(), model=KEY.model, crop=crop,
                     model_version=KEY.version)  # fmt: skip


def worker(tmp_path: Path, raster: str) -> IndexWorker:
    LandCover._shared.clear()  # one per process normally; each test its own raster
    settings = IndexerSettings(index_model=KEY.model, index_model_version=KEY.version, landcover_raster=raster)
    return IndexWorker(settings, SimpleNamespace(topics=Topics()), DirectoryStore(tmp_path / "s3"), KEY)


def test_records_with_coordinates_are_indexed_with_their_shares(tmp_path: Path) -> None:
    work = worker(tmp_path, forest_raster(tmp_path / "cdl.tif"))
    lat, lon = in_forest()
    work.handle(embedding("a" * 64, {"genus": "Quercus", "decimalLatitude": lat, "decimalLongitude": lon}))
    work.handle(embedding("b" * 64, {"genus": "Quercus"}))  # no coordinates
    work.handle(embedding("c" * 64, {"genus": "Quercus", "decimalLatitude": "10", "decimalLongitude": "10"}))
    covered = work.index.get("a" * 64)
    assert covered is not None and set(SHARE_COLUMNS) <= set(covered)
    assert float(covered["F_small"]) == 1.0  # the small box is all forest
    assert 0.0 < float(covered["W_big"]) < 0.5  # the big one reaches the lake
    assert not set(SHARE_COLUMNS) & set(work.index.get("b" * 64) or {})
    assert (work.index.get("c" * 64) or {})[REASON_COLUMN] == "outside_raster"
    query = np.asarray(embedding("a" * 64, {}).vector, dtype=np.float32)
    hits = work.index.search(query, 10, {"F_small": Numeric.of(">=", ["0.5"])})
    assert [h.image_id for h in hits] == ["a" * 64]


def test_an_unreadable_raster_is_transient_not_a_crash(tmp_path: Path) -> None:
    work = worker(tmp_path, str(tmp_path / "not-there.tif"))
    lat, lon = in_forest()
    with pytest.raises(Transient, match="land-cover raster"):
        work.handle(embedding("a" * 64, {"decimalLatitude": lat, "decimalLongitude": lon}))
    assert work.index.get("a" * 64) is None  # not indexed without its shares; the batch is retried


def test_an_s3_raster_is_downloaded_once(tmp_path: Path) -> None:
    raster = forest_raster(tmp_path / "cdl.tif")
    fetched: list[str] = []

    def fget_object(bucket: str, key: str, path: str) -> None:
        fetched.append(f"{bucket}/{key}")
        shutil.copy(raster, path)

    stat = SimpleNamespace(size=Path(raster).stat().st_size)
    client = SimpleNamespace(stat_object=lambda bucket, key: stat, fget_object=fget_object)
    store = SimpleNamespace(client=client)
    first = local_copy("s3://maps/cdl/2023.tif", store, str(tmp_path / "cache"))  # type: ignore[arg-type]
    again = local_copy("s3://maps/cdl/2023.tif", store, str(tmp_path / "cache"))  # type: ignore[arg-type]
    assert first == again == str(tmp_path / "cache" / "maps" / "cdl" / "2023.tif")
    assert fetched == ["maps/cdl/2023.tif"] and Path(first).read_bytes() == Path(raster).read_bytes()
    with pytest.raises(ValueError, match="s3://BUCKET/KEY"):
        local_copy("s3://maps", store, str(tmp_path))  # type: ignore[arg-type]
