"""The explorer coloured by a land-cover share, in Debian's Chromium (Playwright), against the real stack.

Records with coordinates on the suite's synthetic CDL (tests/integration/landcover_raster.py: forest west,
water east) are ingested through the fetcher; the dashboard, filtered to their genus, is coloured by a share
chosen on the page, and every point's value and colour, and every bar's bins, are checked against the shares
the indexer stored for those records.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import landcover_raster
import pytest
from pipeline_helpers import outcomes, submit, unique_job, wait_done
from test_landcover_ingest import indexer_raster

from taxonstream.portal import landcover_colours as cover
from taxonstream.v1 import indexer_pb2
from taxonstream.v1.messages_pb2 import Outcome
from tools.stack import local_stack as stack

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
PORTAL = f"http://127.0.0.1:{stack.PORTAL.grpc_port}"
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "explorer"
# The portal reuses a listing for 20 s (TAXONSTREAM_PORTAL_LISTING_TTL_SECONDS): new records show after that.
LISTING_WAIT_S = 120


@pytest.fixture(scope="module")
def page(local_stack, tmp_path_factory) -> Iterator[object]:
    assert CHROMIUM.exists(), "Debian's chromium is missing: `make browser` installs it (apt-get install chromium)"
    errors: list[str] = []
    with sync_api.sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        found = context.new_page()
        found.set_default_timeout(60_000)
        found.on("pageerror", lambda error: errors.append(str(error)))
        yield found
        context.close()
        browser.close()
    assert not errors, f"script errors on the pages: {errors}"


def _places() -> list[dict[str, str]]:
    forest = landcover_raster.point(*landcover_raster.FOREST_CELL)
    water = landcover_raster.point(*landcover_raster.WATER_CELL)
    edge = landcover_raster.point(295.0, 300.0)  # 5 cells west of the water: both boxes part forest, part water
    return [
        {"decimalLatitude": forest[0], "decimalLongitude": forest[1]},
        {"decimalLatitude": water[0], "decimalLongitude": water[1]},
        {"decimalLatitude": edge[0], "decimalLongitude": edge[1]},
        {"decimalLatitude": "44.5", "decimalLongitude": "-100.3"},  # South Dakota: outside the raster, no shares
        {},  # no coordinates
    ]


@pytest.fixture(scope="module")
def records(fetcher, indexer, site) -> tuple[str, dict[str, dict[str, str]]]:
    """The genus and, by image id, the metadata the indexer stored for the ingested records."""
    if not indexer_raster():
        pytest.skip("the running indexer has no TAXONSTREAM_LANDCOVER_RASTER: `stack down` and let the suite start it")
    genus = "Fagus" + unique_job("plc").replace("-", "")
    metadata = [{"genus": genus, **place} for place in _places()]
    job = unique_job("portal-landcover")
    submit(fetcher, job, [site.url("img", p) for p in site.images(len(metadata))], metadata)
    assert wait_done(fetcher, job, timeout=300).indexed == len(metadata)
    ids = [o.image_id for _, o in sorted(outcomes(fetcher, job).items()) if o.state == Outcome.INDEXED]
    same_genus = indexer_pb2.Filter(field="genus", values=[genus])
    hits = indexer.Search(indexer_pb2.SearchRequest(image_id=ids[0], k=50, filters=[same_genus]), timeout=60).hits
    stored = {h.image_id: dict(h.metadata) for h in hits}
    assert set(stored) == set(ids)
    assert float(stored[ids[0]]["F_small"]) == 1.0 and float(stored[ids[1]]["F_small"]) == 0.0
    assert 0.0 < float(stored[ids[2]]["F_small"]) < 1.0  # the edge point really is mixed
    assert "F_small" not in stored[ids[3]] and "F_small" not in stored[ids[4]]
    return genus, {i: stored[i] for i in ids}


def _open_until_listed(page, address: str, expected_points: int) -> None:
    """Open the dashboard until the portal's listing holds the new records (it is reused for 20 s)."""
    for _ in range(LISTING_WAIT_S // 5):
        page.goto(PORTAL + address)
        page.wait_for_load_state("networkidle")
        if page.locator("#worldmap circle").count() >= expected_points:
            return
        page.wait_for_timeout(5_000)
    raise AssertionError(f"{address}: the records did not reach the dashboard in {LISTING_WAIT_S} s")


def _expected(stored: dict[str, dict[str, str]], column: str) -> dict[str, float | None]:
    return {i: float(m[column]) if column in m else None for i, m in stored.items()}


def _check_map(page, stored: dict[str, dict[str, str]], column: str) -> None:
    expected = _expected(stored, column)
    placed = {i for i, m in stored.items() if "decimalLatitude" in m}
    drawn = {
        c.get_attribute("data-id"): (c.get_attribute("data-value"), c.get_attribute("fill"))
        for c in page.locator("#worldmap circle").all()
    }
    assert set(drawn) == placed  # the record without coordinates is not drawn: counted as no data
    for image_id in placed:
        value = expected[image_id]
        assert drawn[image_id] == (cover.label(value), cover.colour(value)), (column, image_id, value)
    summary = page.locator("#map-scale-summary").inner_text()
    shares = [v for v in expected.values() if v is not None]
    assert summary.startswith(f"{column}: {len(shares)} image")
    assert f"{min(shares):.3f} to {max(shares):.3f}" in summary and f"{len(stored) - len(shares)} no data" in summary
    assert "1 without coordinates (no data)" in page.locator("#map-h + p").inner_text()


def test_the_dashboard_colours_records_by_a_chosen_land_cover_share(page, records):
    genus, stored = records
    ids = list(stored)
    _open_until_listed(page, f"/dashboard?by=genus&colour=F_small&map_colour=F_small&genus={genus}", 4)
    # Forest is the top of the scale, water its bottom, the point outside the raster grey.
    fills = {c.get_attribute("data-id"): c.get_attribute("fill") for c in page.locator("#worldmap circle").all()}
    assert (fills[ids[0]], fills[ids[1]], fills[ids[3]]) == (cover.STOPS[-1], cover.STOPS[0], cover.NO_DATA_COLOUR)
    _check_map(page, stored, "F_small")
    # The genus's bar split into the shares' bins, "no data" for the two records without shares.
    row = page.locator(f'#distribution tbody tr[data-value="{genus}"]')
    bars = {r.get_attribute("data-segment"): int(r.get_attribute("data-images")) for r in row.locator("rect").all()}
    assert bars == Counter(cover.bin_label(v) for v in _expected(stored, "F_small").values())
    assert bars[cover.NO_DATA] == 2

    # Another share chosen with the page's own control: the address keeps the genus, the map recolours.
    page.select_option("select[name=map_colour]", "W_big")
    page.click("#dash-form button[type=submit]")
    page.wait_for_url(re.compile(r".*map_colour=W_big.*"))
    page.wait_for_load_state("networkidle")
    assert f"genus = {genus}" in page.locator("#only").inner_text()
    _check_map(page, stored, "W_big")
    page.locator("#worldmap").scroll_into_view_if_needed()
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "dashboard-landcover.png"), full_page=True)


def test_the_embedding_map_offers_the_shares_and_colours_by_the_scale(page, records):
    _, stored = records
    with page.expect_response(lambda answer: "/api/embeddings" in answer.url, timeout=180_000) as answer:
        page.goto(PORTAL + "/embeddings?colour=F_big")
    points = answer.value.json()["points"]
    circles = page.locator("#emb-svg circle")
    sync_api.expect(circles.first).to_be_attached()
    assert page.locator("#emb-scale").is_visible()
    assert page.locator("select[name=colour] option[value=WL_small]").count() == 1
    # Each point: its share's bin, and the scale's colour of its own share (grey without one), as drawn.
    for point in points:
        assert (point["value"], point["colour"]) == (cover.bin_label(point["share"]), cover.colour(point["share"]))
        if point["id"] in stored:  # an even sample of the collection: ours may be in it
            assert point["share"] == _expected(stored, "F_big")[point["id"]]
    fills = page.evaluate("[...document.querySelectorAll('#emb-svg circle')].map((c) => c.getAttribute('fill'))")
    assert fills == [p["colour"] for p in points]
    legend = [b.get_attribute("data-value") for b in page.locator("#emb-legend button").all()]
    assert legend == [v for v in cover.legend() if v in {p["value"] for p in points}]
