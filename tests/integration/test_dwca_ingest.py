"""`taxonstream ingest ARCHIVE.zip` through the running stack: a GBIF-style Darwin Core Archive's images
arrive in the index with their occurrence's taxonomy, coordinates, institution and licence; the sound and
the image without a URL are skipped and written to --skipped."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

from pipeline_helpers import unique_job

from taxonstream.cli.main import main as taxonstream
from taxonstream.v1 import indexer_pb2

FIXTURE = Path(__file__).parents[1] / "unit" / "data" / "dwca" / "gbif_download"


def test_a_dwca_zip_is_ingested_with_its_occurrences(fetcher, indexer, site, tmp_path, capsys):
    tag = unique_job("d").replace("-", "")
    images = site.images(3)
    media = (FIXTURE / "multimedia.txt").read_text()
    for image, name in zip(images, ("danaus-dorsal.jpg", "danaus-ventral.jpg", "bombus.png"), strict=True):
        media = media.replace(f"https://images.example.org/{name}", site.url("img", image))
    occurrences = (FIXTURE / "occurrence.txt").read_text().replace("\tDanaus\t", f"\tDanaus{tag}\t")
    archive = tmp_path / "download.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.write(FIXTURE / "meta.xml", "meta.xml")
        handle.writestr("occurrence.txt", occurrences)
        handle.writestr("multimedia.txt", media)
    skipped = tmp_path / "skipped.csv"
    job = unique_job("dwca")
    assert taxonstream(["ingest", str(archive), "--job-id", job, "--skipped", str(skipped), "--timeout", "300"]) == 0
    assert f"job {job} (download.zip): 3 records — 3 indexed" in capsys.readouterr().out
    with open(skipped, newline="") as handle:
        assert sorted((r["line"], r["reason"]) for r in csv.DictReader(handle)) == [
            ("4", "not_still_image"),
            ("6", "no_url"),
        ]
    request = indexer_pb2.SearchRequest(
        k=10, text="a butterfly", filters=[indexer_pb2.Filter(field="genus", values=[f"Danaus{tag}"])]
    )
    hits = list(indexer.Search(request, timeout=60).hits)
    assert len(hits) == 2
    assert {h.metadata["catalogNumber"] for h in hits} == {"ENT-001"}
    assert {h.metadata["decimalLatitude"] for h in hits} == {"42.378"}
    assert {h.metadata["institutionCode"] for h in hits} == {"MCZ"}
    assert {h.metadata["license"] for h in hits} == {
        "http://creativecommons.org/licenses/by-nc/4.0/",
        "http://creativecommons.org/publicdomain/zero/1.0/",
    }
