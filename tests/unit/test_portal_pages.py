"""The portal's own logic, without servers: upload checks, CSRF and token, dashboard numbers, projection, pages."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from taxonstream.portal.app import create_app
from taxonstream.portal.insights import NO_VALUE, distribution, map_points, project
from taxonstream.portal.settings import PortalSettings
from taxonstream.portal.uploads import UploadError, check_image, url_list_records
from taxonstream.portal.views import SearchQuery
from taxonstream.v1 import indexer_pb2


def _jpeg(width: int = 64, height: int = 48) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 120, 40)).save(out, format="JPEG")
    return out.getvalue()


def test_an_image_within_the_caps_passes_and_others_are_refused_in_one_line():
    data = _jpeg()
    assert check_image(data, "moth.jpg", 1 << 20, 10_000) == data
    with pytest.raises(UploadError, match=r"^notes\.jpg: not an image"):
        check_image(b"genus,species\nDanaus,plexippus\n", "notes.jpg", 1 << 20, 10_000)
    with pytest.raises(UploadError, match=r"^moth\.jpg: .* MiB is over the 0 MiB limit"):
        check_image(data, "moth.jpg", 100, 10_000)
    with pytest.raises(UploadError, match=r"^big\.jpg: 200x100 is 0 MP, over the 0 MP limit"):
        check_image(_jpeg(200, 100), "big.jpg", 1 << 20, 10_000)
    with pytest.raises(UploadError, match=r"^cut\.png: a damaged image"):
        out = io.BytesIO()
        Image.new("RGB", (64, 64)).save(out, format="PNG")
        check_image(out.getvalue()[:-30], "cut.png", 1 << 20, 10_000)
    with pytest.raises(UploadError, match="empty file"):
        check_image(b"", "none.jpg", 1 << 20, 10_000)


def test_a_url_list_is_read_by_the_clis_reader_and_bad_lists_are_refused():
    first, rest = url_list_records(
        b"url,genus\nhttp://a.example/1.jpg,Apis\nhttp://a.example/2.jpg,Bombus\n", "l.csv", 1000
    )
    assert first.url == "http://a.example/1.jpg" and first.metadata["genus"] == "Apis"
    assert [r.url for r in rest] == ["http://a.example/2.jpg"]
    with pytest.raises(UploadError, match="no (data )?rows"):
        url_list_records(b"url,genus\n", "empty.csv", 1000)
    with pytest.raises(UploadError, match=r"list\.docx: unknown format"):
        url_list_records(b"x", "list.docx", 1000)
    with pytest.raises(UploadError, match="over the"):
        url_list_records(b"url\n" + b"http://a.example/x.jpg\n" * 100, "big.csv", 1000)


def _hit(image_id: str, **metadata: str) -> indexer_pb2.Hit:
    return indexer_pb2.Hit(image_id=image_id, metadata=metadata)


def test_distribution_takes_stats_counts_and_splits_rows_by_the_second_column():
    hits = [_hit("a", genus="Apis", licence="CC0"), _hit("b", genus="Apis", licence="CC-BY"),
            _hit("c", genus="Bombus", licence="CC0"), _hit("d", licence="CC0")]  # fmt: skip
    stats = indexer_pb2.StatsResponse(images=4)
    stats.by_field["genus"].counts.update({"Apis": 2, "Bombus": 1})
    found = distribution(stats, hits, "genus", "licence")
    rows = {r.value: r for r in found.rows}
    assert found.from_stats and {v: r.count for v, r in rows.items()} == {"Apis": 2, "Bombus": 1, NO_VALUE: 1}
    assert rows["Apis"].percent == 50.0
    assert {s[0]: s[2] for s in rows["Apis"].segments} == {"CC0": 50.0, "CC-BY": 50.0}
    # A column the index does not count: counted from the listing.
    other = distribution(stats, [_hit("a", basisOfRecord="PreservedSpecimen"), _hit("b")], "basisOfRecord", "")
    assert not other.from_stats and {r.value: r.count for r in other.rows} == {"PreservedSpecimen": 1, NO_VALUE: 1}


def test_map_points_are_placed_equirectangularly_and_bad_coordinates_left_out():
    hits = [_hit("a", decimalLatitude="0", decimalLongitude="0", genus="Apis"),
            _hit("b", decimalLatitude="90", decimalLongitude="-180"),
            _hit("c", decimalLatitude="95", decimalLongitude="10"), _hit("d")]  # fmt: skip
    points, legend, unplaced = map_points(hits, "genus")
    assert [(p.x, p.y) for p in points] == [(360.0, 180.0), (0.0, 0.0)]
    assert unplaced == 2 and set(legend) == {"Apis", NO_VALUE}


def test_pca_finds_the_direction_of_most_variance():
    rng = np.random.default_rng(0)
    along = np.linspace(-1, 1, 200)
    vectors = np.outer(along, [1.0, 2.0, 0.0, 0.0]) + rng.normal(0, 0.01, (200, 4))
    coords, method, ratios = project(vectors.astype(np.float32))
    assert method == "pca" and ratios[0] > 0.99
    assert coords.min() >= 0 and coords.max() <= 1
    assert abs(np.corrcoef(coords[:, 0], along)[0, 1]) > 0.999


def test_search_query_from_the_address_keeps_filters_and_caps_k():
    query = SearchQuery.from_params(
        {"text": " moth ", "k": "9999", "genus": "Apis, Bombus"}, ["basisOfRecord=X", "bad"]
    )
    assert query.text == "moth" and query.k == 200 and query.filters == {"genus": ["Apis", "Bombus"]}
    assert query.metadata == [("basisOfRecord", "X")]
    numeric = SearchQuery.from_params({"text": "moth"}, ["decimalLatitude >= 40", "F_small=0.5"])
    assert numeric.numeric == [("decimalLatitude", ">=", "40"), ("F_small", "=", "0.5")] and not numeric.metadata
    sent = [(f.field, f.op, list(f.values)) for f in numeric.request(text="moth").filters]
    assert sent == [("decimalLatitude", ">=", ["40"]), ("F_small", "=", ["0.5"])]
    assert numeric.request(text="moth").k == 24  # inside the index: no over-fetch
    assert query.request(text="moth").k == 500  # metadata filters are applied to the top 500
    assert query.more_like("abc").startswith("/search?id=abc&k=200&genus=Apis%2CBombus")


@pytest.fixture
def client() -> TestClient:
    # Nothing listens on port 9: every service call fails as UNAVAILABLE.
    unreachable = {f"{s}_addr": "127.0.0.1:9" for s in ("fetcher", "checksummer", "detector", "embedder", "indexer")}
    settings = PortalSettings(
        portal_token="sesame", upload_max_bytes=1 << 20, url_list_max_bytes=1 << 20, **unreachable
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_pages_say_when_a_service_is_down(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    page = client.get("/search?text=moth")
    assert page.status_code == 503 and "the indexer at 127.0.0.1:9 is not reachable" in page.text
    assert client.get("/api/jobs").json() == {
        "error": "the fetcher at 127.0.0.1:9 is not reachable; try again when it is up"
    }
    assert client.get("/dashboard").status_code == 503
    assert client.get("/api/health").json() == dict.fromkeys(
        ("fetcher", "checksummer", "detector", "embedder", "indexer"), False
    )


def test_posts_need_the_pages_csrf_value_and_job_changes_the_token(client):
    refused = client.post("/search", files={"image": ("m.jpg", _jpeg())})
    assert refused.status_code == 403 and "came from another site" in refused.text
    csrf = client.get("/classify").cookies["portal_csrf"]
    bad = client.post("/search", data={"csrf": csrf}, files={"image": ("m.jpg", b"not an image")})
    assert bad.status_code == 400 and "m.jpg: not an image" in bad.text
    no_token = client.post("/jobs", data={"csrf": csrf}, files={"urls": ("u.csv", b"url\nhttp://a.example/1.jpg\n")})
    assert no_token.status_code == 403 and "needs the portal" in no_token.text
    with_token = client.post(
        "/jobs", data={"csrf": csrf, "token": "sesame"}, files={"urls": ("u.csv", b"url\nhttp://a.example/1.jpg\n")}
    )
    assert with_token.status_code == 503  # past the checks, to the (unreachable) fetcher
    assert client.delete("/jobs/x").status_code == 405
    # Past both caps (1 MiB each, plus 1 MiB of form fields): refused before the body is read.
    assert client.post("/search", content=b"x" * (3 << 20)).status_code == 413
