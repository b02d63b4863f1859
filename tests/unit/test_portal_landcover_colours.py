"""Colouring the explorer by a land-cover share: the scale, the bins, the dashboard's bars and map, the page."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from taxonstream.landcover.crosswalk import SHARE_COLUMNS
from taxonstream.portal import landcover_colours as cover
from taxonstream.portal.app import create_app
from taxonstream.portal.insights import columns, distribution, map_points, samples
from taxonstream.portal.settings import PortalSettings
from taxonstream.v1 import indexer_pb2


def _hit(image_id: str, **metadata: str) -> indexer_pb2.Hit:
    return indexer_pb2.Hit(image_id=image_id, metadata=metadata)


def _rgb(colour: str) -> tuple[int, ...]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


def test_the_scale_runs_through_its_stops_and_interpolates_between_them():
    assert cover.colour(0.0) == cover.STOPS[0] and cover.colour(1.0) == cover.STOPS[-1]
    assert cover.colour(0.5) == cover.STOPS[2] and cover.colour(0.75) == cover.STOPS[3]
    # 0.125 is halfway between the first two stops (0 and 0.25), channel by channel.
    halfway = tuple(round((a + b) / 2) for a, b in zip(_rgb(cover.STOPS[0]), _rgb(cover.STOPS[1]), strict=True))
    assert _rgb(cover.colour(0.125)) == halfway
    assert cover.colour(None) == cover.NO_DATA_COLOUR and cover.NO_DATA_COLOUR not in cover.STOPS
    # Viridis gets lighter from 0 to 1: the green channel rises at every step of 0.1.
    greens = [_rgb(cover.colour(i / 10))[1] for i in range(11)]
    assert greens == sorted(greens) and len(set(greens)) == 11


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0.25", 0.25), ("1", 1.0), ("0", 0.0), (" 0.5 ", 0.5), ("", None), ("nan", None), ("1.5", None),
     ("-0.1", None), ("forest", None)],
)  # fmt: skip
def test_a_share_is_a_number_in_0_1_or_no_data(text, expected):
    assert cover.share({"F_small": text}, "F_small") == expected
    assert cover.share({}, "F_small") is None


def test_bins_are_fifths_with_1_in_the_last_and_no_data_apart():
    assert [cover.bin_label(v) for v in (0.0, 0.199, 0.2, 0.5, 0.8, 0.999, 1.0, None)] == [
        "0–0.2", "0–0.2", "0.2–0.4", "0.4–0.6", "0.8–1", "0.8–1", "0.8–1", cover.NO_DATA,
    ]  # fmt: skip
    legend = cover.legend()
    assert list(legend) == [*cover.bin_labels(), cover.NO_DATA] and legend["0.4–0.6"] == cover.colour(0.5)


def test_every_share_is_offered_once_apart_from_the_other_columns():
    hits = [_hit("a", F_small="1", basisOfRecord="PreservedSpecimen")]
    assert "basisOfRecord" in columns(hits) and not set(SHARE_COLUMNS) & set(columns(hits))
    assert len(SHARE_COLUMNS) == 16 and all(cover.is_share(c) for c in SHARE_COLUMNS)
    assert not cover.is_share("bb_small") and not cover.is_share("genus")
    assert cover.describe("WL_big") == "WL_big (wetland, 2-mile box)"


def _collection() -> list[indexer_pb2.Hit]:
    return [
        _hit("forest", genus="Quercus", F_small="1", decimalLatitude="40", decimalLongitude="-82"),
        _hit("water", genus="Quercus", F_small="0", decimalLatitude="40", decimalLongitude="-81.9"),
        _hit("edge", genus="Quercus", F_small="0.37037", decimalLatitude="40", decimalLongitude="-81.95"),
        _hit("outside", genus="Apis", decimalLatitude="10", decimalLongitude="10", landcover_reason="outside_raster"),
        _hit("nowhere", genus="Apis"),
    ]


def test_bars_split_by_a_share_count_each_bin_and_no_data():
    stats = indexer_pb2.StatsResponse(images=5)
    stats.by_field["genus"].counts.update({"Quercus": 3, "Apis": 2})
    found = distribution(stats, _collection(), "genus", "F_small")
    rows = {r.value: r for r in found.rows}
    assert [(s[0], s[1]) for s in rows["Quercus"].segments] == [("0–0.2", 1), ("0.2–0.4", 1), ("0.8–1", 1)]
    assert [(s[0], s[1], s[3]) for s in rows["Apis"].segments] == [(cover.NO_DATA, 2, cover.NO_DATA_COLOUR)]
    assert list(found.legend) == ["0–0.2", "0.2–0.4", "0.8–1", cover.NO_DATA]  # low to high, as a scale
    # Counting by a share: its bins, in order; a bin's samples are the images in it.
    by_share = distribution(stats, _collection(), "F_small", "")
    assert [(r.value, r.count) for r in by_share.rows] == [("0–0.2", 1), ("0.2–0.4", 1), ("0.8–1", 1), ("no data", 2)]
    assert [h.image_id for h in samples(_collection(), "F_small", "0.2–0.4", None)] == ["edge"]
    assert [h.image_id for h in samples(_collection(), "genus", "Apis", ("F_small", cover.NO_DATA))] == [
        "outside",
        "nowhere",
    ]


def test_map_points_coloured_by_a_share_have_its_own_colour_and_grey_without_one():
    points, legend, unplaced = map_points(_collection(), "F_small")
    by_id = {p.image_id: p for p in points}
    assert unplaced == 1 and set(by_id) == {"forest", "water", "edge", "outside"}
    assert (by_id["forest"].value, by_id["forest"].colour) == ("1.000", cover.STOPS[-1])
    assert (by_id["water"].value, by_id["water"].colour) == ("0.000", cover.STOPS[0])
    assert (by_id["edge"].value, by_id["edge"].colour) == ("0.370", cover.colour(0.37037))
    assert (by_id["outside"].value, by_id["outside"].colour) == (cover.NO_DATA, cover.NO_DATA_COLOUR)
    assert by_id["edge"].label.endswith("F_small 0.370") and cover.NO_DATA in legend
    summary = cover.summarise((h.metadata for h in _collection()), "F_small")
    assert (summary.with_share, summary.without, summary.low, summary.high) == (3, 2, 0.0, 1.0)
    assert summary.mean == pytest.approx((1 + 0 + 0.37037) / 3) and summary.bins["no data"] == 2


class _Indexer:
    """The two calls the dashboard makes, answered from a fixed collection (no server in a unit test)."""

    def __init__(self, hits: list[indexer_pb2.Hit]) -> None:
        self.hits = hits
        self.filters: list[list[indexer_pb2.Filter]] = []

    def Stats(self, request, timeout=None):  # noqa: N802 - the RPC's name
        self.filters.append(list(request.filters))
        return indexer_pb2.StatsResponse(images=len(self.hits))

    def ListImages(self, request, timeout=None):  # noqa: N802 - the RPC's name
        self.filters.append(list(request.filters))
        return iter(self.hits)


def test_the_dashboard_page_offers_every_share_and_draws_the_scale():
    settings = PortalSettings(**{f"{s}_addr": "127.0.0.1:9" for s in ("fetcher", "checksummer", "detector",
                                                                       "embedder", "indexer")})  # fmt: skip
    app = create_app(settings)
    with TestClient(app) as client:
        fake = _Indexer(_collection())
        app.state.backends.indexer = fake
        page = client.get("/dashboard?by=genus&colour=F_small&map_colour=F_small&genus=Quercus,Apis")
    assert page.status_code == 200
    assert all(f'<option value="{c}"' in page.text for c in SHARE_COLUMNS)
    assert 'data-id="edge" data-value="0.370"' in page.text and cover.colour(0.37037) in page.text
    assert 'data-id="outside" data-value="no data"' in page.text and 'id="share-scale"' in page.text
    assert "3 images with a share (0.000 to 1.000, mean 0.457); 2 no data" in page.text
    assert "style=" not in page.text  # the CSP allows no inline style
    sent = [(f.field, list(f.values)) for f in fake.filters[0]]
    assert sent == [("genus", ["Quercus", "Apis"])] and fake.filters[1][0].field == "genus"
