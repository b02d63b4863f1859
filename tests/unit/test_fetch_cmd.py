"""`taxonstream fetch`: files named by a column, checksums, the buddy check, resuming, and the logs."""

from __future__ import annotations

import argparse
import csv
import hashlib
import http.server
import io
import json
import threading
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from taxonstream.cli import fetch_cmd


def jpeg(shade: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (shade, 20, 200)).save(out, format="JPEG")
    return out.getvalue()


IMAGES = {f"/img/{n}": jpeg(n * 30) for n in range(6)}
PNG = io.BytesIO()
Image.new("RGB", (20, 20)).save(PNG, format="PNG")
IMAGES["/img/p"] = PNG.getvalue()


class Images(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hits: Counter = Counter()
    lock = threading.Lock()

    def log_message(self, format, *args):  # noqa: A002
        pass

    def do_GET(self):  # noqa: N802
        with Images.lock:
            Images.hits[self.path] += 1
        body = IMAGES.get(self.path)
        self.send_response(200 if body else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")


@contextmanager
def site(address: str = "127.0.0.1"):
    Images.hits = Counter()
    httpd = http.server.ThreadingHTTPServer((address, 0), Images)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://{address}:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture()
def base():
    with site() as url:
        yield url


def write_list(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def fetch(listing: Path, out: Path, *extra: str) -> int:
    parser = argparse.ArgumentParser()
    fetch_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["fetch", str(listing), "--output", str(out), "--quiet", "--allow-network", "127.0.0.0/8", *extra]
    )
    return args.run(args)


def logs_of(out: Path) -> Path:
    """The logs live beside the image folder (OUTPUT_logs), so sum-buddy of OUTPUT sees images only."""
    return out.parent / f"{out.name}_logs"


def report(out: Path) -> list[dict]:
    with open(logs_of(out) / "report.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_files_are_named_and_filed_by_columns_with_checksums_like_sum_buddy(tmp_path, base):
    listing = write_list(
        tmp_path / "list.csv",
        ["url", "filename", "family", "md5"],
        [
            [f"{base}/img/0", "moth-0.jpg", "Noctuidae", hashlib.md5(IMAGES["/img/0"]).hexdigest()],
            [f"{base}/img/1", "moth-1", "Noctuidae", hashlib.md5(IMAGES["/img/1"]).hexdigest()],
            [f"{base}/img/p", "bee", "Apidae", hashlib.md5(IMAGES["/img/p"]).hexdigest()],
        ],
    )
    out = tmp_path / "out"
    assert fetch(listing, out, "--name-col", "filename", "--subdir-col", "family", "--checksum-col", "md5") == 0
    assert (out / "Noctuidae" / "moth-0.jpg").read_bytes() == IMAGES["/img/0"]
    assert (out / "Noctuidae" / "moth-1.jpg").read_bytes() == IMAGES["/img/1"]  # suffix from the bytes
    assert (out / "Apidae" / "bee.png").read_bytes() == IMAGES["/img/p"]
    with open(logs_of(out) / "checksums.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["filepath", "filename", "md5"]
    assert {(Path(r[0]).name, r[1], r[2]) for r in rows[1:]} == {
        ("moth-0.jpg", "moth-0.jpg", hashlib.md5(IMAGES["/img/0"]).hexdigest()),
        ("moth-1.jpg", "moth-1.jpg", hashlib.md5(IMAGES["/img/1"]).hexdigest()),
        ("bee.png", "bee.png", hashlib.md5(IMAGES["/img/p"]).hexdigest()),
    }
    success = [json.loads(line) for line in (logs_of(out) / "success.jsonl").read_text().splitlines()]
    assert {s["metadata"]["family"] for s in success} == {"Noctuidae", "Apidae"}  # metadata travels
    assert all(s["sha256"] == hashlib.sha256(Path(s["path"]).read_bytes()).hexdigest() for s in success)


def test_a_checksum_mismatch_keeps_no_file_and_the_buddy_check_lists_it(tmp_path, base, capsys):
    listing = write_list(
        tmp_path / "list.csv",
        ["url", "name", "sha256"],
        [
            [f"{base}/img/0", "a.jpg", hashlib.sha256(IMAGES["/img/0"]).hexdigest()],
            [f"{base}/img/1", "b.jpg", "0" * 64],
            [f"{base}/img/missing", "c.jpg", "1" * 64],
        ],
    )
    out = tmp_path / "out"
    assert fetch(listing, out, "--name-col", "name", "--checksum-col", "sha256") == 1
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["a.jpg"]
    reasons = {r["url"].rsplit("/", 1)[-1]: r["reason"] for r in report(out)}
    assert reasons == {"0": "", "1": "checksum_mismatch", "missing": "http_404"}
    with open(logs_of(out) / "missing.csv", newline="") as handle:
        missing = list(csv.DictReader(handle))
    assert sorted(m["reason"] for m in missing) == ["checksum_mismatch", "http_404"]
    assert "buddy check (sha256): 1 verified, 2 missing" in capsys.readouterr().out


def test_running_again_skips_verified_files_without_a_request(tmp_path, base):
    listing = write_list(tmp_path / "list.csv", ["url", "name"], [[f"{base}/img/{n}", f"f{n}"] for n in range(4)])
    out = tmp_path / "out"
    assert fetch(listing, out, "--name-col", "name") == 0
    first = dict(Images.hits)
    (out / "f2.jpg").write_bytes(IMAGES["/img/2"][:100])  # damaged since: must be fetched again
    assert fetch(listing, out, "--name-col", "name") == 0
    states = {r["url"].rsplit("/", 1)[-1]: r["state"] for r in report(out)}
    assert states == {"0": "present", "1": "present", "2": "stored", "3": "present"}
    assert Images.hits["/img/2"] == first["/img/2"] + 1
    assert all(Images.hits[f"/img/{n}"] == first[f"/img/{n}"] for n in (0, 1, 3))
    assert (out / "f2.jpg").read_bytes() == IMAGES["/img/2"]
    assert fetch(listing, out, "--name-col", "name", "--force") == 0
    assert Images.hits["/img/0"] == first["/img/0"] + 1


def test_unsafe_and_duplicate_names_fail_without_writing_anywhere_else(tmp_path, base):
    listing = write_list(
        tmp_path / "list.csv",
        ["url", "name", "dir"],
        [
            [f"{base}/img/0", "../escape.jpg", "x"],
            [f"{base}/img/1", "ok.jpg", "../../up"],
            [f"{base}/img/2", ".hidden.jpg", "x"],
            [f"{base}/img/3", "same.jpg", "x"],
            [f"{base}/img/4", "same.jpg", "x"],
            [f"{base}/img/5", "", "x"],
        ],
    )
    out = tmp_path / "out"
    assert fetch(listing, out, "--name-col", "name", "--subdir-col", "dir") == 1
    reasons = [r["reason"] for r in sorted(report(out), key=lambda r: int(r["row"]))]
    assert reasons == ["bad_name", "bad_name", "bad_name", "", "duplicate_name", "bad_name"]
    assert not (tmp_path / "escape.jpg").exists() and not (tmp_path / "up").exists()
    assert [p.relative_to(out).as_posix() for p in out.rglob("*.jpg")] == ["x/same.jpg"]


def test_rows_are_named_by_number_without_a_name_column_and_the_parquet_report_has_every_row(tmp_path, base):
    listing = write_list(tmp_path / "list.csv", ["url"], [[f"{base}/img/0"], [f"{base}/img/p"], ["ftp://x/y"]])
    out = tmp_path / "out"
    assert fetch(listing, out) == 1
    # Named by the row's line in the list (line 1 is the header).
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["00000002.jpg", "00000003.png"]
    table = pq.read_table(logs_of(out) / "report.parquet").to_pylist()
    assert sorted((r["row"], r["state"], r["reason"]) for r in table) == [
        (2, "stored", ""),
        (3, "stored", ""),
        (4, "failed", "bad_url"),
    ]
    assert {r["width"] for r in table if r["state"] == "stored"} == {40, 20}
    with open(logs_of(out) / "checksums.csv", newline="") as handle:
        sums = list(csv.reader(handle))
    assert sums[0] == ["filepath", "filename", "sha256"]  # the default: the digest already computed
    assert sums[1][2] == hashlib.sha256(Path(sums[1][0]).read_bytes()).hexdigest()


def test_an_idigbio_list_uses_the_url_fallbacks(tmp_path, base):
    header = ["coreid", "ac:accessURI", "ac:bestQualityAccessURI", "dc:rights"]
    listing = write_list(
        tmp_path / "multimedia.csv",
        header,
        [
            ["a", f"{base}/img/0", f"{base}/img/1", "CC0"],
            ["b", "", f"{base}/img/2", "CC-BY"],
        ],
    )
    out = tmp_path / "out"
    assert fetch(listing, out, "--name-col", "coreid") == 0
    assert (out / "a.jpg").read_bytes() == IMAGES["/img/0"]
    assert (out / "b.jpg").read_bytes() == IMAGES["/img/2"]
    success = [json.loads(line) for line in (logs_of(out) / "success.jsonl").read_text().splitlines()]
    assert {s["metadata"]["license"] for s in success} == {"CC0", "CC-BY"}


def test_a_missing_input_or_column_is_a_usage_error(tmp_path):
    from taxonstream.fetching.inputs import InputError

    with pytest.raises(InputError):
        fetch(tmp_path / "absent.csv", tmp_path / "out")
    listing = write_list(tmp_path / "list.csv", ["link"], [["http://a.example/1.jpg"]])
    with pytest.raises(InputError, match="no URL column"):
        fetch(listing, tmp_path / "out")


def test_several_processes_share_the_hosts_and_give_the_same_result(tmp_path):
    with site("127.0.0.1") as first, site("127.0.0.2") as second:  # two hosts
        rows = [[f"{base}/img/{n}", f"{tag}{n}"] for base, tag in ((first, "a"), (second, "b")) for n in range(6)]
        rows.append(["ftp://x/y", "bad"])
        listing = write_list(tmp_path / "list.csv", ["url", "name"], rows)
        out = tmp_path / "out"
        assert fetch(listing, out, "--name-col", "name", "--processes", "2") == 1
    assert sum(r["state"] == "stored" for r in report(out)) == 12
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == sorted(
        [f"a{n}.jpg" for n in range(6)] + [f"b{n}.jpg" for n in range(6)]
    )
    assert all((out / f"a{n}.jpg").read_bytes() == IMAGES[f"/img/{n}"] for n in range(6))
    assert [r["reason"] for r in report(out) if r["state"] == "failed"] == ["bad_url"]
    assert not (logs_of(out) / "tmp").exists()


# Issue 14: cautious-robot's habits, options checked first, every bad input one line and nothing written.


def test_mistyped_columns_and_empty_lists_are_refused_before_anything_is_written(tmp_path, base):
    from taxonstream.fetching.inputs import InputError

    listing = write_list(tmp_path / "list.csv", ["url", "filename", "md5"], [[f"{base}/img/0", "a.jpg", "0" * 32]])
    out = tmp_path / "out"
    for option, value in (("--checksum-col", "md55"), ("--name-col", "file_name"), ("--subdir-col", "family")):
        with pytest.raises(InputError, match=f"{option}: no column '{value}'"):
            fetch(listing, out, option, value)
    (tmp_path / "empty.csv").write_text("url,filename\n")
    with pytest.raises(InputError, match="no data rows"):
        fetch(tmp_path / "empty.csv", out)
    assert not out.exists() and not logs_of(out).exists()
    assert sum(Images.hits.values()) == 0


def test_column_options_are_case_insensitive(tmp_path, base):
    listing = write_list(tmp_path / "list.csv", ["URL", "FileName", "MD5"], [[f"{base}/img/0", "a.jpg", ""]])
    listing.write_text(listing.read_text().replace(",\r\n", f",{hashlib.md5(IMAGES['/img/0']).hexdigest()}\r\n"))
    out = tmp_path / "out"
    assert fetch(listing, out, "--url-col", "url", "--name-col", "filename", "--checksum-col", "md5") == 0
    assert (out / "a.jpg").read_bytes() == IMAGES["/img/0"]


def test_a_file_swapped_since_the_last_run_is_fetched_again(tmp_path, base):
    listing = write_list(tmp_path / "list.csv", ["url", "name"], [[f"{base}/img/0", "a.jpg"]])
    out = tmp_path / "out"
    assert fetch(listing, out, "--name-col", "name") == 0
    (out / "a.jpg").write_bytes(IMAGES["/img/3"])  # another valid image in its place
    assert fetch(listing, out, "--name-col", "name") == 0
    assert (out / "a.jpg").read_bytes() == IMAGES["/img/0"]
    assert [r["state"] for r in report(out)] == ["stored"]
    assert Images.hits["/img/0"] == 2


def test_rows_without_a_url_are_skipped_logged_and_do_not_fail_the_run(tmp_path, base):
    listing = write_list(
        tmp_path / "list.csv", ["url", "name", "genus"], [[f"{base}/img/0", "a.jpg", "Apis"], ["", "b.jpg", "Bombus"]]
    )
    out = tmp_path / "out"
    assert fetch(listing, out, "--name-col", "name") == 0
    with open(logs_of(out) / "skipped.csv", newline="") as handle:
        skipped = list(csv.DictReader(handle))
    assert [(s["line"], s["reason"], s["name"], s["genus"]) for s in skipped] == [("3", "no_url", "b.jpg", "Bombus")]
    assert sorted((r["row"], r["state"]) for r in report(out)) == [("2", "stored"), ("3", "skipped")]


def test_logs_are_beside_the_images_and_checksums_csv_is_sum_buddys_bytes(tmp_path, base):
    from taxonstream.integrity.sumbuddy import checksum_to_csv

    listing = write_list(tmp_path / "list.csv", ["url", "dir"], [[f"{base}/img/{n}", f"d{n % 2}"] for n in range(4)])
    out = tmp_path / "out"
    assert fetch(listing, out, "--subdir-col", "dir", "--checksum-algo", "md5") == 0
    assert all(p.suffix == ".jpg" for p in out.rglob("*") if p.is_file())  # no logs among the images
    checksum_to_csv(str(out), str(tmp_path / "expected.csv"), algorithm="md5")
    assert (logs_of(out) / "checksums.csv").read_bytes() == (tmp_path / "expected.csv").read_bytes()
    elsewhere = tmp_path / "elsewhere"
    assert fetch(listing, tmp_path / "out2", "--log-dir", str(elsewhere)) == 0
    assert (elsewhere / "report.csv").is_file()


def test_missing_csv_carries_the_source_row(tmp_path, base):
    listing = write_list(
        tmp_path / "list.csv", ["url", "name", "sha256", "genus"], [[f"{base}/img/missing", "c.jpg", "1" * 64, "Apis"]]
    )
    out = tmp_path / "out"
    assert fetch(listing, out, "--name-col", "name", "--checksum-col", "sha256") == 1
    with open(logs_of(out) / "missing.csv", newline="") as handle:
        (missing,) = list(csv.DictReader(handle))
    assert (missing["url"], missing["name"], missing["genus"], missing["line"], missing["reason"]) == (
        f"{base}/img/missing",
        "c.jpg",
        "Apis",
        "2",
        "http_404",
    )


def test_a_png_served_for_a_jpg_name_is_refused_or_renamed(tmp_path, base):
    listing = write_list(tmp_path / "list.csv", ["url", "name"], [[f"{base}/img/p", "x.jpg"]])
    out = tmp_path / "out"
    assert fetch(listing, out, "--name-col", "name") == 1
    assert [r["reason"] for r in report(out)] == ["extension_mismatch"] and not (out / "x.jpg").exists()
    assert fetch(listing, out, "--name-col", "name", "--fix-extensions") == 0
    assert (out / "x.png").read_bytes() == IMAGES["/img/p"] and not (out / "x.jpg").exists()
    assert fetch(listing, out, "--name-col", "name", "--fix-extensions") == 0  # found again under its new name
    assert [r["state"] for r in report(out)] == ["present"]


@pytest.mark.parametrize(("mode", "size"), [("square", (16, 16)), ("shorter", (21, 16))])
def test_downsized_copies(tmp_path, base, mode, size):
    listing = write_list(tmp_path / "list.csv", ["url", "name"], [[f"{base}/img/0", "a.jpg"]])
    out = tmp_path / "out"
    assert fetch(listing, out, "--name-col", "name", "--resize", "16", "--resize-mode", mode) == 0
    with Image.open(tmp_path / "out_downsized" / "a.jpg") as small:
        assert small.size == size  # the original is 40 x 30
    assert (out / "a.jpg").read_bytes() == IMAGES["/img/0"]


def test_a_bad_cidr_is_one_line():
    from taxonstream.fetching.inputs import InputError

    args = argparse.Namespace(
        allow_network=["10.0.0.0/33"], robots=False, min_size=None, **dict.fromkeys(OVERRIDES, None)
    )
    with pytest.raises(InputError) as caught:
        fetch_cmd.settings_from(args)
    assert str(caught.value) == "bad option: '10.0.0.0/33' is not a network; expected a CIDR such as 127.0.0.0/8"


OVERRIDES = ("connections", "per_host", "initial_rate", "max_rate", "attempts", "timeout", "max_bytes")
OVERRIDES += ("user_agent", "contact")


def test_a_darwin_core_archive_is_fetched_with_its_occurrences(tmp_path, base):
    import shutil
    import zipfile

    source = Path(__file__).parent / "data" / "dwca" / "gbif_download"
    media = (source / "multimedia.txt").read_text()
    for n, name in enumerate(("danaus-dorsal.jpg", "danaus-ventral.jpg", "bombus.png")):
        media = media.replace(f"https://images.example.org/{name}", f"{base}/img/{n}")
    archive = tmp_path / "download.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for name in ("meta.xml", "occurrence.txt"):
            handle.write(source / name, name)
        handle.writestr("multimedia.txt", media)
    out = tmp_path / "out"
    assert fetch(archive, out, "--name-col", "title") == 1  # the bombus row has no title: bad_name
    success = [json.loads(line) for line in (logs_of(out) / "success.jsonl").read_text().splitlines()]
    assert sorted((s["row"], Path(s["path"]).name, s["metadata"]["genus"]) for s in success) == [
        (2, "dorsal.jpg", "Danaus"),
        (3, "ventral.jpg", "Danaus"),
    ]
    states = sorted((r["row"], r["state"], r["reason"]) for r in report(out))
    assert states == [
        ("2", "stored", ""),
        ("3", "stored", ""),
        ("4", "skipped", "not_still_image"),
        ("5", "failed", "bad_name"),
        ("6", "skipped", "no_url"),
    ]
    shutil.rmtree(out)
