"""Darwin Core Archives and media-record lists in the formats users download, from fixtures in data/:
URLs, licence, rights holder and taxonomy for every row, the join by coreid, and the rows left out."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

from taxonstream.fetching.inputs import InputError, InputStats, read_records

DATA = Path(__file__).parent / "data"
GBIF = ("gbif_download.zip", "gbif_download")
AUDUBON = ("audubon.zip", "audubon")


def read(path: Path) -> tuple[list, InputStats, list[tuple[int, str]]]:
    stats, skipped = InputStats(), []
    records = list(read_records(path, stats=stats, on_skip=lambda line, reason, row: skipped.append((line, reason))))
    return records, stats, skipped


@pytest.mark.parametrize("name", GBIF)
def test_a_gbif_download_joins_each_image_to_its_occurrence(name):
    records, stats, skipped = read(DATA / "dwca" / name)
    got = [
        (
            r.url,
            r.metadata["license"],
            r.metadata["rights_holder"],
            r.metadata["scientificName"],
            r.metadata["genus"],
            r.metadata["decimalLatitude"],
            r.metadata["decimalLongitude"],
            r.metadata["country"],
            r.metadata["institutionCode"],
            r.metadata["catalogNumber"],
            r.metadata["source_line"],
        )
        for r in records
    ]
    harvard = "President and Fellows of Harvard College"
    danaus = ("Danaus plexippus (Linnaeus, 1758)", "Danaus", "42.378", "-71.116", "United States", "MCZ", "ENT-001")
    assert got == [
        ("https://images.example.org/danaus-dorsal.jpg", "http://creativecommons.org/licenses/by-nc/4.0/", harvard)
        + danaus
        + ("2",),
        ("https://images.example.org/danaus-ventral.jpg", "http://creativecommons.org/publicdomain/zero/1.0/", harvard)
        + danaus
        + ("3",),
        ("https://images.example.org/bombus.png", "http://creativecommons.org/licenses/by/4.0/", "NHM London")
        + ("Bombus terrestris (Linnaeus, 1758)", "Bombus", "51.496", "-0.176", "United Kingdom", "NHMUK", "BMNH-77")
        + ("5",),
    ]
    taxonomy = [
        (r.metadata["kingdom"], r.metadata["order"], r.metadata["family"], r.metadata["species"]) for r in records
    ]
    assert taxonomy[0] == ("Animalia", "Lepidoptera", "Nymphalidae", "Danaus plexippus")
    assert taxonomy[2] == ("Animalia", "Hymenoptera", "Apidae", "Bombus terrestris")
    # fieldsEnclosedBy="": a quote is an ordinary character, not the start of a quoted field
    assert records[0].metadata["description"] == 'a "good" specimen'
    assert "occurrenceRemarks" not in records[0].metadata  # only the chosen occurrence fields travel
    assert stats.kind == "gbif" and stats.rows == 5
    assert skipped == [(4, "not_still_image"), (6, "no_url")]  # the sound, and the image without an identifier


@pytest.mark.parametrize("name", AUDUBON)
def test_an_audubon_core_archive_takes_access_uris_and_rights(name):
    records, stats, skipped = read(DATA / "dwca" / name)
    assert stats.kind == "audubon" and skipped == []
    assert [(r.url, r.metadata["source_line"]) for r in records] == [
        ("https://images.example.org/asu/vespula.jpg", "2"),  # the access URI, not the UUID identifier
        ("https://images.example.org/asu/opuntia.jpg", "4"),  # line 4: the caption above spans two lines
        ("", "5"),  # no access URI: the identifier (an Audubon record's id, not a URL) is not guessed at
    ]
    first, second = records[0].metadata, records[1].metadata
    assert first["identifier"] == "9f0a6c1e-2b7d-4a9e-8f53-0d7c2e1b4a11"
    assert (first["rights_holder"], first["license"], first["rights"]) == (
        "Arizona State University",
        "https://creativecommons.org/licenses/by-nc-sa/4.0/legalcode",
        "http://creativecommons.org/licenses/by-nc-sa/4.0/",
    )
    assert (second["rights_holder"], second["license"]) == ("ASU Herbarium", "CC0 1.0")
    assert (first["scientificName"], first["family"], first["catalogNumber"], first["decimalLongitude"]) == (
        "Vespula pensylvanica",
        "Vespidae",
        "ASUHIC0001",
        "-111.93",
    )
    assert (second["kingdom"], second["country"], second["institutionCode"]) == ("Plantae", "Mexico", "ASU")


def test_idigbio_media_records_follow_idigbios_url_rule():
    records, stats, skipped = read(DATA / "inputs" / "idigbio_mediarecords.csv")
    assert stats.kind == "idigbio"
    assert [(r.metadata["coreid"], r.url) for r in records] == [
        ("r1", "https://images.example.org/idb/1.jpg"),
        ("r2", "https://images.example.org/idb/2-big.jpg"),
        ("r3", "https://images.example.org/idb/3"),  # no ac: value at all: dcterms:identifier
        ("r4", ""),  # an ac: term is filled, so the identifier is not taken as the URL
        ("r5", "https://images.example.org/idb/5"),  # dc:identifier, the last fallback
    ]
    assert [(r.metadata.get("license"), r.metadata.get("rights_holder")) for r in records[:2]] == [
        ("https://creativecommons.org/publicdomain/zero/1.0/", "Museum A"),
        ("CC BY", "Museum B"),
    ]
    assert skipped == [(7, "not_still_image")]  # the video


def test_a_symbiota_export_with_unprefixed_audubon_terms():
    records, stats, skipped = read(DATA / "inputs" / "symbiota_images.csv")
    assert stats.kind == "audubon"
    first = records[0]
    assert first.url == "https://images.example.org/sym/123456_lg.jpg"
    assert (first.metadata["rights_holder"], first.metadata["license"], first.metadata["creator"]) == (
        "Arizona State University Hasbrouck Insect Collection",
        "http://creativecommons.org/licenses/by-nc/3.0/",
        "J. Smith",
    )
    assert first.metadata["rights"] == "http://creativecommons.org/licenses/by-nc/3.0/"
    assert records[1].url == ""  # only goodQualityAccessURI: not in iDigBio's rule


def test_skipped_rows_are_told_with_their_line_when_urls_are_required():
    stats, skipped = InputStats(), []
    path = DATA / "inputs" / "symbiota_images.csv"
    records = list(read_records(path, stats=stats, skip_empty_urls=True, on_skip=lambda *a: skipped.append(a)))
    assert len(records) == 1
    assert [(line, reason, row["coreid"]) for line, reason, row in skipped] == [(3, "no_url", "123457")]
    assert stats.skipped == {"no_url": 1}


def test_broken_archives_are_one_clear_error(tmp_path):
    no_meta = tmp_path / "no-meta.zip"
    with zipfile.ZipFile(no_meta, "w") as archive:
        archive.writestr("occurrence.txt", "id\n1\n")
    with pytest.raises(InputError, match="no meta.xml"):
        list(read_records(no_meta))
    garbage = tmp_path / "garbage.zip"
    garbage.write_bytes(b"not a zip at all")
    with pytest.raises(InputError, match="not a readable zip"):
        list(read_records(garbage))
    folder = tmp_path / "archive"
    shutil.copytree(DATA / "dwca" / "gbif_download", folder)
    (folder / "multimedia.txt").unlink()
    with pytest.raises(InputError, match="multimedia.txt, which is not in the folder"):
        list(read_records(folder))
    no_media = tmp_path / "occurrences-only"
    shutil.copytree(DATA / "dwca" / "gbif_download", no_media)
    meta = (no_media / "meta.xml").read_text()
    (no_media / "meta.xml").write_text(meta[: meta.index("<extension")] + "</archive>\n")
    with pytest.raises(InputError, match="no multimedia extension"):
        list(read_records(no_media))
