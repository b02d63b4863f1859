"""URL lists in every accepted format become records; bad files fail with a clear error."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taxonstream.fetching.inputs import InputError, read_records

ROWS = [
    {"url": "http://a.example/1.jpg", "scientificName": "Apis mellifera", "license": "CC0"},
    {"url": " http://b.example/2.jpg ", "scientificName": "Bombus terrestris", "license": "CC-BY"},
]


def check(records):
    records = list(records)
    assert [r.url for r in records] == ["http://a.example/1.jpg", "http://b.example/2.jpg"]
    assert records[1].metadata["scientificName"] == "Bombus terrestris"
    assert "url" not in records[0].metadata


def test_csv(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("url,scientificName,license\n" + "\n".join(",".join(r.values()) for r in ROWS) + "\n")
    check(read_records(path))


def test_gzipped_tsv(tmp_path):
    path = tmp_path / "list.tsv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("url\tscientificName\tlicense\n" + "\n".join("\t".join(r.values()) for r in ROWS) + "\n")
    check(read_records(path))


def test_jsonl(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    check(read_records(path))


def test_parquet(tmp_path):
    path = tmp_path / "list.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    check(read_records(path))


def test_idigbio_column_is_found_without_url_col(tmp_path):
    path = tmp_path / "media.csv"
    path.write_text("coreid,ac:accessURI,dcterms:rights\n1,http://x.example/m.jpg,CC0\n")
    assert [r.url for r in read_records(path)] == ["http://x.example/m.jpg"]


def test_named_column_must_exist(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("link\nhttp://a.example/1.jpg\n")
    with pytest.raises(InputError, match="no column 'url'"):
        list(read_records(path, "url"))
    assert [r.url for r in read_records(path, "link")] == ["http://a.example/1.jpg"]


def test_unknown_extension_and_missing_file_are_clear(tmp_path):
    with pytest.raises(InputError, match="unknown format"):
        list(read_records(tmp_path / "list.xlsx"))
    with pytest.raises(InputError, match="no such file"):
        list(read_records(tmp_path / "absent.csv"))


def test_an_empty_url_still_becomes_a_record(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("url,genus\n,Apis\n")
    assert [(r.url, r.metadata["genus"]) for r in read_records(path)] == [("", "Apis")]


def test_idigbio_urls_fall_back_per_row_and_rights_are_normalised(tmp_path):
    path = tmp_path / "multimedia.csv"
    path.write_text(
        "coreid,ac:accessURI,ac:bestQualityAccessURI,dcterms:identifier,dc:format,dcterms:rights,xmpRights:Owner\n"
        "1,http://a.example/1.jpg,http://a.example/1-big.jpg,,image/jpeg,CC0,Museum A\n"
        "2,,http://a.example/2-big.jpg,http://a.example/2-id,image/jpeg,CC-BY,\n"
        "3,,,http://a.example/3-id,image/jpeg,,\n"
        "4,,,,image/jpeg,,\n"
    )
    records = list(read_records(path))
    assert [r.url for r in records] == [
        "http://a.example/1.jpg",
        "http://a.example/2-big.jpg",
        "http://a.example/3-id",
        "",
    ]
    first = records[0].metadata
    assert (first["format"], first["license"], first["rights"], first["rights_holder"]) == (
        "image/jpeg",
        "CC0",
        "CC0",
        "Museum A",
    )
    assert first["ac:bestQualityAccessURI"] == "http://a.example/1-big.jpg"  # the other columns still travel
    assert "ac:accessURI" not in first


def test_idigbio_full_term_iris_are_understood(tmp_path):
    path = tmp_path / "media.tsv"
    path.write_text(
        "coreid\thttp://rs.tdwg.org/ac/terms/accessURI\thttp://purl.org/dc/terms/license\n"
        "1\thttp://a.example/1.jpg\thttp://creativecommons.org/publicdomain/zero/1.0/\n"
    )
    (record,) = read_records(path)
    assert record.url == "http://a.example/1.jpg"
    assert record.metadata["license"] == "http://creativecommons.org/publicdomain/zero/1.0/"


def test_gbif_multimedia_keeps_still_images_only(tmp_path):
    from taxonstream.fetching.inputs import InputStats

    path = tmp_path / "multimedia.txt"
    path.write_text(
        "gbifID,type,format,identifier,references,license,rightsHolder,creator\n"
        "1,StillImage,image/jpeg,http://g.example/1.jpg,http://g.example/1,CC0,Herbarium,Ann\n"
        "2,Sound,audio/mpeg,http://g.example/2.mp3,,CC0,,\n"
        "3,,image/png,http://g.example/3.png,,CC-BY,,\n"
        "4,,,http://g.example/4,,,,\n"
        "5,StillImage,image/jpeg,,,,,\n"
        "6,http://purl.org/dc/dcmitype/StillImage,,http://g.example/6.jpg,,,,\n"
    )
    stats = InputStats()
    records = list(read_records(path, stats=stats))
    assert [r.url for r in records] == ["http://g.example/1.jpg", "http://g.example/3.png", "http://g.example/6.jpg"]
    assert (stats.kind, stats.rows, stats.not_images, stats.no_url) == ("gbif", 6, 2, 1)
    meta = records[0].metadata
    assert (meta["rights_holder"], meta["creator"], meta["references"], meta["license"]) == (
        "Herbarium",
        "Ann",
        "http://g.example/1",
        "CC0",
    )
    assert meta["gbifID"] == "1" and "identifier" not in meta


def test_malformed_rows_become_records_with_the_error_and_reading_goes_on(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text(
        "url,genus\nhttp://a.example/1.jpg,Apis\nhttp://a.example/2.jpg,Bombus,extra,fields\n"
        'http://a.example/3.jpg\nhttp://a.example/4.jpg,"Vespa\n'
    )
    records = list(read_records(path))
    assert [r.url for r in records][:3] == ["http://a.example/1.jpg", "", "http://a.example/3.jpg"]
    assert "4 fields where the header has 2" in records[1].metadata["_input_error"]
    assert records[2].metadata["genus"] == ""  # a short row is padded, not refused


def test_broken_json_lines_become_records_with_the_error(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('{"url": "http://a.example/1.jpg"}\n{"url": \n[1, 2]\n{"url": "http://a.example/2.jpg"}\n')
    records = list(read_records(path))
    assert [r.url for r in records] == ["http://a.example/1.jpg", "", "", "http://a.example/2.jpg"]
    assert "not JSON" in records[1].metadata["_input_error"]
    assert "not an object" in records[2].metadata["_input_error"]


def test_an_unreadable_row_is_recorded_and_reading_goes_on(tmp_path):
    path = tmp_path / "list.csv"
    huge = "x" * 200_000  # beyond the csv module's field limit: csv.Error for this row only
    path.write_text(f"url,note\nhttp://a.example/1.jpg,ok\nhttp://a.example/2.jpg,{huge}\nhttp://a.example/3.jpg,ok\n")
    records = list(read_records(path))
    assert [r.url for r in records] == ["http://a.example/1.jpg", "", "http://a.example/3.jpg"]
    assert "field larger than field limit" in records[1].metadata["_input_error"]


def test_search_filters_parse_and_bad_ones_are_clear():
    from taxonstream.cli.clients import index_filters

    parsed = index_filters(["genus=Apis,Bombus", "licence = CC0-1.0"])
    assert [(f.field, list(f.values)) for f in parsed] == [("genus", ["Apis", "Bombus"]), ("licence", ["CC0-1.0"])]
    for bad in ["genus", "=Apis", "genus="]:
        with pytest.raises(InputError, match="FIELD=VALUE"):
            index_filters([bad])


def test_model_flags_name_an_index_version():
    from taxonstream.cli.clients import index_version

    assert index_version(None) == {}
    assert index_version("bioclip2_image") == {"model": "bioclip2_image", "model_version": "1"}
    assert index_version("bioclip2_image/3") == {"model": "bioclip2_image", "model_version": "3"}
    with pytest.raises(InputError, match="--model"):
        index_version("a/b/c")


# Issue 14: delimiters by content, encodings, broken files, line numbers, case-insensitive columns.


def test_a_tab_separated_txt_is_sniffed_and_the_delimiter_can_be_named(tmp_path):
    path = tmp_path / "multimedia.txt"  # GBIF ships tab-separated .txt files
    path.write_text("gbifID\ttype\tformat\tidentifier\n1\tStillImage\timage/jpeg\thttp://g.example/1.jpg\n")
    assert [r.url for r in read_records(path)] == ["http://g.example/1.jpg"]
    semi = tmp_path / "list.csv"
    semi.write_text("url;genus\nhttp://a.example/1.jpg;Apis\n")
    assert [(r.url, r.metadata["genus"]) for r in read_records(semi)] == [("http://a.example/1.jpg", "Apis")]
    (record,) = read_records(semi, "url;genus", delimiter="|")  # the named delimiter wins over the sniffed one
    assert record.url == "http://a.example/1.jpg;Apis"


def test_encodings_are_detected_or_refused_with_the_line_and_byte(tmp_path):
    text = "url,genus\nhttp://a.example/1.jpg,Ménétriés\n"
    for name, data in {
        "bom.csv": b"\xef\xbb\xbf" + text.encode(),
        "utf16.csv": text.encode("utf-16"),
    }.items():
        (tmp_path / name).write_bytes(data)
        (record,) = read_records(tmp_path / name)
        assert (record.url, record.metadata["genus"]) == ("http://a.example/1.jpg", "Ménétriés")
    latin = tmp_path / "latin.csv"
    latin.write_bytes(("url,genus\nhttp://a.example/0.jpg,Apis\n" + text.split("\n", 1)[1]).encode("latin-1"))
    with pytest.raises(InputError, match=r"line 3, byte \d+: 0xe9 is not valid utf-8.*--encoding latin-1"):
        list(read_records(latin))
    records = list(read_records(latin, encoding="latin-1"))
    assert records[1].metadata["genus"] == "Ménétriés"


def test_empty_header_only_and_zero_row_inputs_are_refused(tmp_path):
    cases = {"empty.csv": "", "header.csv": "url,genus\n", "blank.jsonl": "\n\n"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError, match="no data rows|empty file"):
            list(read_records(tmp_path / name))
    zero = tmp_path / "zero.parquet"
    pq.write_table(pa.table({"url": pa.array([], pa.string())}), zero)
    with pytest.raises(InputError, match="no data rows"):
        list(read_records(zero))


def test_broken_parquet_and_fake_gzip_are_one_clear_error(tmp_path):
    for name, data in {"empty.parquet": b"", "garbage.parquet": b"PAR1 but not really"}.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InputError, match="not a readable Parquet file"):
            list(read_records(tmp_path / name))
    fake = tmp_path / "list.csv.gz"
    fake.write_text("url\nhttp://a.example/1.jpg\n")
    with pytest.raises(InputError, match="not gzip-compressed"):
        list(read_records(fake))


def test_an_unterminated_quote_costs_its_line_not_the_next_row(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text(
        'url,genus\nhttp://a.example/1.jpg,Apis\nhttp://a.example/2.jpg,"Vespa\nhttp://a.example/3.jpg,Bombus\n'
        'http://a.example/4.jpg,"multi\nline"\n'
    )
    records = list(read_records(path))
    assert [(r.url, r.metadata["source_line"]) for r in records] == [
        ("http://a.example/1.jpg", "2"),
        ("", "3"),
        ("http://a.example/3.jpg", "4"),
        ("http://a.example/4.jpg", "5"),  # a quoted line break that closes properly is still one field
    ]
    assert records[1].metadata["_input_error"].startswith("line 3:")
    assert records[3].metadata["genus"] == "multi\nline"


def test_rows_are_numbered_by_line_and_limit_counts_input_rows(tmp_path):
    path = tmp_path / "multimedia.txt"
    path.write_text(
        "gbifID\ttype\tformat\tidentifier\n"
        "1\tSound\taudio/mpeg\thttp://g.example/1.mp3\n"
        "2\tStillImage\timage/jpeg\thttp://g.example/2.jpg\n"
        "3\tStillImage\timage/jpeg\thttp://g.example/3.jpg\n"
    )
    records = list(read_records(path, limit=2))
    assert [(r.url, r.metadata["source_line"]) for r in records] == [("http://g.example/2.jpg", "3")]


def test_column_names_are_matched_case_insensitively(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("Image_URL,genus\nhttp://a.example/1.jpg,Apis\n")
    assert [r.url for r in read_records(path, "image_url")] == ["http://a.example/1.jpg"]
    from taxonstream.fetching.inputs import find_column

    assert find_column(["FileName", "md5"], "filename", "--name-col") == "FileName"
    with pytest.raises(InputError, match="--checksum-col: no column 'md55'"):
        find_column(["FileName", "md5"], "md55", "--checksum-col")
