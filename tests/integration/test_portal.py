"""The explorer in a real browser: Debian's Chromium driven by Playwright, against the real stack's portal.

The stack fixture starts the portal with the five services (tools/stack/local_stack.py). A URL list is
submitted from the Jobs page and followed there to the end; the other pages are then checked against the
services' own answers. Screenshots of every page go to docs/explorer/ (shown in docs/explorer.md).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from taxonstream.classify.service import store_bank
from taxonstream.classify.templates import prompts
from taxonstream.classify.zeroshot import LabelBank
from taxonstream.v1 import embedder_pb2, indexer_pb2
from tools.demo.sample import GENERA, make_images, serve
from tools.stack import local_stack as stack

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

CHROMIUM = Path("/usr/bin/chromium")
# No sandbox (root in a container), no GPU, and nothing that reaches out on its own (updates, sync, field trials).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The stack's portal; TAXONSTREAM_PORTAL_URL points the tests at another (a development copy on another port).
PORTAL = os.environ.get("TAXONSTREAM_PORTAL_URL", f"http://127.0.0.1:{stack.PORTAL.grpc_port}")
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "explorer"
BANK = "portal-insects"
ORDERS = {"Danaus": "Lepidoptera", "Papilio": "Lepidoptera", "Pieris": "Lepidoptera", "Bombus": "Hymenoptera",
          "Carabus": "Coleoptera", "Coccinella": "Coleoptera"}  # fmt: skip
# Where each sample genus is placed on the map (lat, lon): made up, spread over the continents.
PLACES = {"Danaus": (19.6, -100.2), "Papilio": (48.1, 11.6), "Pieris": (-33.9, 151.2), "Bombus": (60.2, 24.9),
          "Carabus": (35.7, 139.7), "Coccinella": (-1.3, 36.8)}  # fmt: skip


@dataclass
class Browser:
    page: object
    errors: list[str] = field(default_factory=list)

    def open(self, path: str) -> None:
        self.page.goto(PORTAL + path)
        self.page.wait_for_load_state("networkidle")

    def shot(self, name: str, full: bool = True) -> None:
        """A screenshot once the thumbnails have loaded (lazy ones load when scrolled to)."""
        SHOTS.mkdir(parents=True, exist_ok=True)
        if full:
            self.page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        self.page.wait_for_load_state("networkidle")
        self.page.wait_for_function("[...document.images].every((i) => i.complete)", timeout=30_000)
        self.page.evaluate("window.scrollTo(0, 0)")
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full)


@pytest.fixture(scope="module")
def browser(local_stack, tmp_path_factory) -> Iterator[Browser]:
    assert CHROMIUM.exists(), "Debian's chromium is missing: `make browser` installs it (apt-get install chromium)"
    profile = tmp_path_factory.mktemp("chromium-profile")  # a fresh profile: no state from another run
    with playwright_api.sync_playwright() as driver:
        context = driver.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 860},
            accept_downloads=True,
        )
        page = context.new_page()
        page.set_default_timeout(60_000)
        found = Browser(page)
        page.on("pageerror", lambda error: found.errors.append(str(error)))
        yield found
        context.close()
    assert not found.errors, f"script errors on the pages: {found.errors}"


@dataclass
class Collection:
    job_id: str
    images: list[Path]
    rows: int


@pytest.fixture(scope="module")
def collection(browser, tmp_path_factory) -> Collection:
    """A URL list with taxonomy and coordinates, submitted from the Jobs page and followed there to done."""
    folder = tmp_path_factory.mktemp("portal-site")
    images = make_images(folder / "img", 18, seed=random.randrange(1 << 30))  # new bytes: indexed, not duplicates
    job_id = f"portal-{random.randrange(1 << 32):08x}"
    with serve(folder / "img") as base_url:
        url_list = folder / "portal-urls.csv"
        with open(url_list, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["url", "scientificName", "genus", "family", "license", "provider",
                             "decimalLatitude", "decimalLongitude"])  # fmt: skip
            for i, image in enumerate(images):
                genus, epithet, family = GENERA[i % len(GENERA)]
                lat, lon = PLACES[genus]
                licence = "CC0-1.0" if i % 4 == 0 else "CC-BY-4.0"  # every genus gets both (6 genera cycle)
                place = (lat + i % 4, lon - i % 5)
                writer.writerow([f"{base_url}/{image.name}", f"{genus} {epithet}", genus, family, licence,
                                 "portal-test", *place])  # fmt: skip
        browser.open("/jobs")
        browser.page.set_input_files("#image-input", str(url_list))
        browser.page.fill("input[name=job_id]", job_id)
        browser.page.click("#submit-form button[type=submit]")
        browser.page.wait_for_url(f"**/jobs/{job_id}")
        # The page polls the portal's JSON and reloads once the job has ended.
        expect(browser.page.locator("#job [data-field=state]").first).to_have_text("done", timeout=300_000)
    return Collection(job_id, images, len(images))


def test_a_job_started_from_the_page_reaches_done_and_its_report_downloads(browser, collection):
    page = browser.page
    browser.open(f"/jobs/{collection.job_id}")
    assert page.locator("#job [data-field=indexed]").inner_text() == str(collection.rows)
    browser.shot("job")
    with page.expect_download() as download:
        page.click("#report-csv")
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert len(rows) == collection.rows
    assert {r["state"] for r in rows} == {"indexed"} and {r["job_id"] for r in rows} == {collection.job_id}
    browser.open("/jobs")
    expect(page.locator(f'tr[data-job="{collection.job_id}"] [data-field=state]')).to_have_text("done")
    browser.shot("jobs", full=False)


def test_uploading_an_ingested_image_shows_that_image_first(browser, collection):
    page = browser.page
    query = collection.images[3]
    browser.open("/search?k=12")
    page.set_input_files("#image-input", str(query))
    page.click("#image-form button[type=submit]")
    page.wait_for_selector("#hits .card")
    first = page.locator("#hits .card").first
    assert first.get_attribute("data-image-id") == hashlib.sha256(query.read_bytes()).hexdigest()
    expect(page.locator(".query-preview")).to_be_visible()
    browser.shot("search-image", full=False)


def test_a_text_search_returns_hits_and_its_address_can_be_shared(browser, collection):
    page = browser.page
    browser.open("/search?text=a+photo+of+Danaus+plexippus&k=12&provider=portal-test")
    cards = page.locator("#hits .card")
    assert cards.count() > 0
    assert page.input_value("input[name=text]") == "a photo of Danaus plexippus"
    assert page.locator("#hits .card .small").all_inner_texts() and all(
        "portal-test" in text for text in page.locator("#hits .card .small").all_inner_texts()
    )
    browser.shot("search-text")
    # "More like this" carries the filters and searches by the hit's own vector: that hit comes first.
    first_id = cards.first.get_attribute("data-image-id")
    cards.first.get_by_role("link", name="More like this", exact=True).click()
    page.wait_for_selector("#hits .card")
    assert (
        "provider=portal-test" in page.url
        and page.locator("#hits .card").first.get_attribute("data-image-id") == first_id
    )


def _store_bank(embedder, store) -> None:
    names = [
        [["Animalia", "Arthropoda", "Insecta", ORDERS[g], family, g, epithet], ""] for g, epithet, family in GENERA
    ]
    texts = [" ".join(n[0]) for n in names]
    answer = embedder.EmbedTexts(embedder_pb2.EmbedTextsRequest(texts=prompts(texts, ["a photo of {}."])), timeout=120)
    vectors = np.asarray([v.values for v in answer.vectors], dtype=np.float32)
    store_bank(store, BANK, LabelBank.from_arrays(vectors, names), answer.model, answer.model_version)


def test_classify_shows_five_rows_with_the_rpcs_probabilities(browser, collection, indexer, embedder, store):
    _store_bank(embedder, store)
    page = browser.page
    image = collection.images[0]
    browser.open(f"/classify?bank={BANK}")
    page.set_input_files("#image-input", str(image))
    page.select_option("select[name=rank]", "species")
    page.click("#classify-form button[type=submit]")
    rows = page.locator("#predictions tbody tr")
    expect(rows).to_have_count(5)
    shown = [(r.get_attribute("data-label"), float(r.get_attribute("data-score"))) for r in rows.all()]
    request = indexer_pb2.ClassifyRequest(image=image.read_bytes(), rank="species", k=5, bank=BANK)
    expected = [(p.label, p.score) for p in indexer.Classify(request, timeout=300).predictions]
    assert [label for label, _ in shown] == [label for label, _ in expected]
    assert [score for _, score in shown] == pytest.approx([score for _, score in expected], rel=1e-6)
    # Each predicted species has a sample image from the collection and links to EOL and GBIF by name.
    assert rows.first.locator(".sample img").count() == 1
    assert rows.first.get_by_role("link", name="GBIF").get_attribute("href").startswith("https://www.gbif.org/")
    browser.shot("classify")


def test_dashboard_counts_equal_stats(browser, collection, indexer):
    page = browser.page
    for _ in range(3):  # another test may be ingesting: compare with a Stats that held still around the page
        before = indexer.Stats(indexer_pb2.StatsRequest(), timeout=60)
        browser.open("/dashboard?by=genus&colour=licence&map_colour=genus&top=1000")
        shown = {r.get_attribute("data-value"): int(r.get_attribute("data-count"))
                 for r in page.locator("#distribution tbody tr").all()}  # fmt: skip
        after = indexer.Stats(indexer_pb2.StatsRequest(), timeout=60)
        if before.images == after.images:
            break
    expected = dict(after.by_field["genus"].counts)
    if after.images > sum(expected.values()):
        expected["(no value)"] = after.images - sum(expected.values())
    assert shown == expected
    assert page.locator("#total-images").inner_text().replace(",", "") == str(after.images)
    # Sample images of one genus that are of one licence, and the collected places on the map.
    browser.open("/dashboard?by=genus&colour=licence&map_colour=genus&value=Danaus&where=licence&where_value=CC-BY-4.0")
    cards = page.locator("#samples .card")
    assert cards.count() > 0 and all("Danaus" in t for t in cards.locator(".taxonomy").all_inner_texts())
    assert all("CC-BY-4.0" in t for t in cards.locator(".licence").all_inner_texts())
    assert page.locator("#worldmap circle").count() >= collection.rows
    browser.shot("dashboard")


def test_embedding_map_selects_and_exports(browser, collection):
    page = browser.page
    browser.open("/embeddings?colour=genus")
    expect(page.locator("#emb-svg circle").first).to_be_attached()
    page.locator("#emb-svg circle").first.hover(force=True)  # points overlap: any circle under it will do
    expect(page.locator("#emb-tip")).to_be_visible()
    legend = page.locator('#emb-legend button[data-value="Danaus"]')
    legend.focus()
    page.keyboard.press("Enter")  # the legend entries are buttons: a class is selected with the keyboard
    expect(page.locator("#sel-count")).not_to_have_text("none")
    with page.expect_download() as download:
        page.click("#sel-export")
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert rows and {r["value"] for r in rows} == {"Danaus"}
    browser.shot("embeddings", full=False)


def test_a_non_image_upload_shows_a_clear_error_and_nothing_breaks(browser, collection, tmp_path):
    page = browser.page
    fake = tmp_path / "specimen.jpg"
    fake.write_bytes(b"genus,species\nDanaus,plexippus\n")
    browser.open("/search")
    page.set_input_files("#image-input", str(fake))
    page.click("#image-form button[type=submit]")
    error = page.locator(".error")
    expect(error).to_contain_text("specimen.jpg: not an image")
    browser.shot("error", full=False)
    browser.open("/search?text=a+photo+of+Bombus+terrestris")
    assert page.locator("#hits .card").count() > 0
    # A form sent without the page's CSRF value (another site's) is refused, and the portal still serves.
    refused = httpx.post(f"{PORTAL}/search", files={"image": ("x.jpg", collection.images[0].read_bytes())})
    assert refused.status_code == 403
    assert httpx.get(f"{PORTAL}/healthz").json() == {"status": "ok"}
