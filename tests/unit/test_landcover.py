"""Land cover on synthetic CDL GeoTIFFs (EPSG:5070, 30 m, CDL codes): shares against a brute-force count."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
pyproj = pytest.importorskip("pyproj")

from affine import Affine  # noqa: E402

from taxonstream.cli.main import main  # noqa: E402
from taxonstream.landcover import cover as cover_module  # noqa: E402
from taxonstream.landcover import points as points_module  # noqa: E402
from taxonstream.landcover.cover import (  # noqa: E402
    INVALID,
    MILE_M,
    MISSING,
    OUTSIDE,
    PARTLY_OUTSIDE,
    BoxSizes,
    RasterCover,
    RasterError,
)
from taxonstream.landcover.crosswalk import CLASSES, COLUMNS, REASON_COLUMN, SHARE_COLUMNS, code_classes  # noqa: E402
from taxonstream.landcover.points import cover_points  # noqa: E402
from taxonstream.landcover.tables import RecordCover  # noqa: E402

X0, Y0, CELL = 1_200_000.0, 1_900_000.0, 30.0  # a corner inside the CDL's Albers extent (Ohio-ish)
# Codes across every class, 0 (background/nodata) and unnamed ones (7, 255): all N.
CODES = np.array([0, 1, 5, 24, 59, 61, 63, 65, 70, 81, 82, 83, 87, 92, 111, 121, 124, 131, 141, 152, 176, 190, 7, 255])
TO_WGS84 = pyproj.Transformer.from_crs("EPSG:5070", "EPSG:4326", always_xy=True)


def write_raster(path: Path, data: np.ndarray, nodata: float | None = 0, crs: str = "EPSG:5070") -> str:
    rows, cols = data.shape
    profile = dict(driver="GTiff", width=cols, height=rows, count=1, dtype=data.dtype.name, crs=crs)
    with rasterio.open(path, "w", transform=Affine(CELL, 0, X0, 0, -CELL, Y0), nodata=nodata, **profile) as out:
        out.write(data, 1)
    return str(path)


def lat_lon(x: np.ndarray, y: np.ndarray) -> tuple[list[float], list[float]]:
    lon, lat = zip(*(TO_WGS84.transform(float(a), float(b)) for a, b in zip(x, y, strict=True)), strict=True)
    return list(lat), list(lon)


def brute_force(data: np.ndarray, x: float, y: float, side_miles: float, nodata: int | None = 0) -> np.ndarray:
    """Every cell of a grid padded far past the raster, kept when its centre is in the box; the padding and
    nodata count as N. Independent of the module's window arithmetic."""
    half, pad = side_miles * MILE_M / 2, 200
    rows, cols = data.shape
    cx = X0 + (np.arange(-pad, cols + pad) + 0.5) * CELL
    cy = Y0 - (np.arange(-pad, rows + pad) + 0.5) * CELL
    in_x = (cx >= x - half) & (cx < x + half)
    in_y = (cy >= y - half) & (cy < y + half)
    table = code_classes()
    counts = dict.fromkeys(CLASSES, 0)
    for r in np.flatnonzero(in_y) - pad:
        for c in np.flatnonzero(in_x) - pad:
            if 0 <= r < rows and 0 <= c < cols and data[r, c] != nodata and int(data[r, c]) in table:
                counts[table[int(data[r, c])][1]] += 1
            else:
                counts["N"] += 1
    total = sum(counts.values())
    return np.array([counts[k] / total for k in CLASSES])


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray]:
    rng = np.random.default_rng(7)
    data = rng.choice(CODES, size=(300, 360)).astype(np.uint8)
    data[100:140, 200:260] = 111  # a lake
    return write_raster(tmp_path_factory.mktemp("cdl") / "mixed.tif", data), data


def test_crosswalk_follows_latloncover_grouping() -> None:
    table = code_classes()
    expected = {1: "A", 61: "A", 59: "G", 60: "G", 176: "G", 63: "F", 64: "F", 70: "F", 152: "F", 65: "B", 131: "B"}
    expected |= {82: "D", 121: "D", 124: "D", 83: "W", 92: "W", 111: "W", 112: "W", 87: "WL", 190: "WL", 195: "WL"}
    expected |= {81: "N", 88: "N"}
    assert {code: table[code][1] for code in expected} == expected
    assert 0 not in table and 255 not in table  # background and unnamed codes: N by absence
    assert set(c for _, c in table.values()) == set(CLASSES)


@pytest.mark.parametrize("grouped", [True, False], ids=["one-read", "read-per-point"])
@pytest.mark.parametrize("sizes", [BoxSizes(), BoxSizes(0.3, 1.1)])
def test_shares_equal_brute_force_for_both_boxes(
    mixed: tuple[str, np.ndarray], sizes: BoxSizes, grouped: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    raster, data = mixed
    if not grouped:  # every group one point: the window arithmetic of each point's own read
        monkeypatch.setattr(cover_module, "GROUP_CELLS", 1)
        monkeypatch.setattr(cover_module, "DENSITY", 0)
    rng = np.random.default_rng(11)
    # Inside, near every edge and corner (boxes crossing the edge), and in the lake.
    x = np.concatenate([rng.uniform(X0, X0 + 360 * CELL, 25), [X0 + 5, X0 + 360 * CELL - 7, X0 + 6900]])
    y = np.concatenate([rng.uniform(Y0 - 300 * CELL, Y0, 25), [Y0 - 3, Y0 - 300 * CELL + 11, Y0 - 3600]])
    lat, lon = lat_lon(x, y)
    covers = cover_points(raster, lat, lon, sizes, workers=1)
    for i in range(len(x)):
        # Compare at the projected point the module used (the lat/lon round trip moves it by nanometres).
        px, py = covers.x[i], covers.y[i]
        for b, side in enumerate((sizes.small_miles, sizes.big_miles)):
            np.testing.assert_array_equal(covers.shares[i, b], brute_force(data, px, py, side))
        assert math.isclose(covers.shares[i].sum(), 2.0)
    partly = {i for i, r in enumerate(covers.reasons) if r == PARTLY_OUTSIDE}
    assert {25, 26} <= partly  # the points by the corners
    assert covers.shares[25, 0, CLASSES.index("N")] > 0.5  # most of a corner box is off the raster


def test_point_in_water_and_nodata(tmp_path: Path) -> None:
    data = np.full((200, 300), 111, dtype=np.uint8)
    data[:, 150:] = 0  # nodata on the east half
    raster = write_raster(tmp_path / "water.tif", data)
    x, y = np.array([X0 + 60 * CELL, X0 + 150 * CELL]), np.array([Y0 - 100 * CELL, Y0 - 100 * CELL])
    covers = cover_points(raster, *lat_lon(x, y), workers=1)
    water, none = CLASSES.index("W"), CLASSES.index("N")
    assert covers.shares[0, 0, water] == 1.0 and covers.shares[0, 1, water] == 1.0
    for b, side in enumerate((0.5, 2.0)):
        np.testing.assert_array_equal(covers.shares[1, b], brute_force(data, covers.x[1], covers.y[1], side))
    assert 0.4 < covers.shares[1, 0, none] < 0.6  # half the box on nodata
    assert covers.reasons == ["", ""]


def test_other_dtype_and_nodata_value(tmp_path: Path) -> None:
    data = np.random.default_rng(3).choice(np.array([1, 111, 141, 999, 255]), size=(120, 120)).astype(np.uint16)
    raster = write_raster(tmp_path / "u16.tif", data, nodata=255)
    x, y = np.array([X0 + 60 * CELL]), np.array([Y0 - 60 * CELL])
    covers = cover_points(raster, *lat_lon(x, y), workers=1)
    np.testing.assert_array_equal(covers.shares[0, 0], brute_force(data, covers.x[0], covers.y[0], 0.5, nodata=255))


def test_bad_and_off_raster_points_are_recorded(mixed: tuple[str, np.ndarray]) -> None:
    raster, _ = mixed
    lat, lon = lat_lon(np.array([X0 - 50_000, X0 + 3000]), np.array([Y0 - 3000, Y0 - 3000]))
    covers = cover_points(raster, [*lat, "", "north", "91", None, "nan"], [*lon, "", "-83", "-83", "-83", "1"])
    assert covers.reasons == [OUTSIDE, "", MISSING, INVALID, INVALID, MISSING, INVALID]
    assert np.isnan(covers.shares[0]).all() and not np.isnan(covers.shares[1]).any()
    assert covers.columns(0)["A_small"] == "" and covers.columns(0)["bb_small"] == ""


def test_parallel_equals_one_process(mixed: tuple[str, np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    raster, _ = mixed
    rng = np.random.default_rng(5)
    x, y = rng.uniform(X0 - 2000, X0 + 13_000, 300), rng.uniform(Y0 - 11_000, Y0 + 1000, 300)
    lat, lon = lat_lon(x, y)
    monkeypatch.setattr(points_module, "PARALLEL_FROM", 10)
    monkeypatch.setattr(points_module, "CHUNK", 64)
    many = cover_points(raster, lat, lon, workers=2)
    one = cover_points(raster, lat, lon, workers=1)
    np.testing.assert_array_equal(many.shares, one.shares)
    assert many.reasons == one.reasons and OUTSIDE in many.reasons


def test_raster_not_in_metres_is_a_clear_error(tmp_path: Path) -> None:
    raster = write_raster(tmp_path / "geo.tif", np.ones((10, 10), dtype=np.uint8), crs="EPSG:4326")
    with pytest.raises(RasterError, match="projected"):
        RasterCover(raster)


def test_cli_writes_latloncover_columns_in_order(mixed: tuple[str, np.ndarray], tmp_path: Path) -> None:
    raster, data = mixed
    x, y = np.array([X0 + 4000, X0 + 20]), np.array([Y0 - 4000, Y0 - 5000])
    lat, lon = lat_lon(x, y)
    source = tmp_path / "in.csv"
    rows = [("a", lat[0], lon[0]), ("b", lat[1], lon[1]), ("c", "", ""), ("d", "x", "1"), ("e", 10.0, 10.0)]
    with source.open("w", newline="") as handle:
        csv.writer(handle).writerows([("id", "Lat", "Lon"), *rows])
    target = tmp_path / "out.csv"
    assert (
        main(["landcover", str(source), str(target), "--raster", raster, "--lat-col", "Lat", "--lon-col", "Lon"]) == 0
    )
    with target.open(newline="") as handle:
        reader = csv.DictReader(handle)
        out = list(reader)
    assert reader.fieldnames == ["id", "Lat", "Lon", *COLUMNS, REASON_COLUMN]
    assert list(COLUMNS[2:10]) == [f"{c}_small" for c in ("A", "B", "D", "F", "G", "N", "W", "WL")]
    assert [r[REASON_COLUMN] for r in out] == ["", PARTLY_OUTSIDE, MISSING, INVALID, OUTSIDE]
    covers = cover_points(raster, lat, lon, workers=1)
    expected = brute_force(data, covers.x[0], covers.y[0], 2.0)
    assert [float(out[0][f"{c}_big"]) for c in CLASSES] == list(expected)
    x1, y1, x2, y2 = map(float, out[0]["bb_small"].split(","))
    assert math.isclose(x2 - x1, 0.5 * MILE_M, abs_tol=0.002) and math.isclose((y1 + y2) / 2, y[0], abs_tol=0.01)


def test_cli_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.csv"
    source.write_text("id,foo\n1,2\n")
    assert main(["landcover", str(source), str(tmp_path / "o.csv"), "--raster", str(tmp_path / "none.tif")]) == 2
    assert main(["landcover", str(tmp_path / "missing.csv"), str(tmp_path / "o.csv"), "--raster", "x.tif"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("taxonstream: ") for line in err)


def test_record_metadata_gets_sixteen_shares(mixed: tuple[str, np.ndarray]) -> None:
    raster, _ = mixed
    lat, lon = lat_lon(np.array([X0 + 5000]), np.array([Y0 - 5000]))
    cover = RecordCover(raster)
    try:
        added = cover.add({"dwc:decimalLatitude": str(lat[0]), "dwc:decimalLongitude": str(lon[0]), "genus": "Apis"})
        assert set(SHARE_COLUMNS) <= set(added) and added["genus"] == "Apis"
        assert math.isclose(sum(float(added[f"{c}_small"]) for c in CLASSES), 1.0)
        assert cover.add({"genus": "Apis"}) == {"genus": "Apis"}  # no coordinates: unchanged
        off = cover.add({"decimalLatitude": "10", "decimalLongitude": "10"})
        assert off[REASON_COLUMN] == OUTSIDE and "A_small" not in off
    finally:
        cover.close()


def test_groups_read_near_points_together_and_never_far_more_than_they_need() -> None:
    rng = np.random.default_rng(9)
    # Dense clusters (one locality, many specimens) and points scattered over a national-sized raster.
    centres = np.concatenate([np.full(200, 5000.0), rng.uniform(0, 100_000, 50)])
    rows = np.concatenate([np.full(200, 7000.0), rng.uniform(0, 100_000, 50)])
    offsets = rng.uniform(-40, 40, (250, 2))
    r0 = (rows + offsets[:, 0]).astype(np.int64)
    c0 = (centres + offsets[:, 1]).astype(np.int64)
    windows = np.stack([r0, r0 + 108, c0, c0 + 108], axis=1)
    found = list(cover_module.groups(np.arange(250), windows))
    assert sorted(i for group, _ in found for i in group) == list(range(250))
    for group, (g0, g1, h0, h1) in found:
        own = sum((windows[i, 1] - windows[i, 0]) * (windows[i, 3] - windows[i, 2]) for i in group)
        assert (g1 - g0) * (h1 - h0) <= max(cover_module.GROUP_CELLS, cover_module.DENSITY * own)
        for i in group:
            assert g0 <= windows[i, 0] and windows[i, 1] <= g1 and h0 <= windows[i, 2] and windows[i, 3] <= h1
    assert len(found) < 60  # the 200-point cluster is one read (or a few), not 200


def test_cli_parquet_in_and_out_keeps_shares_numeric(mixed: tuple[str, np.ndarray], tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    raster, _ = mixed
    lat, lon = lat_lon(np.array([X0 + 4000]), np.array([Y0 - 4000]))
    pq.write_table(
        pa.table({"decimalLatitude": [lat[0], None], "decimalLongitude": [lon[0], None]}), tmp_path / "i.parquet"
    )
    assert main(["landcover", str(tmp_path / "i.parquet"), str(tmp_path / "o.parquet"), "--raster", raster]) == 0
    table = pq.read_table(tmp_path / "o.parquet")
    assert table.schema.field("F_big").type == pa.float64()
    assert table.column(REASON_COLUMN).to_pylist() == ["", MISSING]
    assert table.column("F_big").to_pylist()[1] is None and 0 <= table.column("F_big").to_pylist()[0] <= 1
