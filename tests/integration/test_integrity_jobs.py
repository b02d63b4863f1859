"""A job's manifest and duplicate groups through the running stack, and two checksummer replicas."""

from __future__ import annotations

import csv
import hashlib
import io
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pipeline_helpers import extra_replica, outcomes, submit, unique_job, wait_done

from taxonstream.v1 import checksummer_pb2, checksummer_pb2_grpc
from taxonstream.v1.messages_pb2 import Outcome
from tools.stack import local_stack as stack

CHECKSUMMER = next(s for s in stack.SERVICES if s.name == "checksummer")


@pytest.fixture(scope="module")
def current_checksummer(checksummer):
    """The checksummer restarted, so it runs this checkout's code (a stack left up may run older code)."""
    stack.stop_service("checksummer")
    stack.start_service(CHECKSUMMER)
    return checksummer


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taxonstream.cli.main", *args], capture_output=True, text=True, timeout=300
    )


def _converted(image: Path, suffix: str = "-copy") -> Path:
    """The same picture as PNG: other bytes, the same pHash (0 bits away for these synthetic JPEGs)."""
    with Image.open(image) as source:
        copy = image.with_name(f"{image.stem}{suffix}.png")
        source.convert("RGB").save(copy, format="PNG")
    return copy


def test_a_jobs_manifest_and_duplicate_groups(current_checksummer, fetcher, store, site, tmp_path):
    original, other = site.hashable_images(2)
    reencoded = _converted(original)
    urls = [
        site.url("img", original),
        site.url("img", original) + "?mirror=2",  # the same bytes from another URL: an exact duplicate
        site.url("img", reencoded),  # a near duplicate of the first
        site.url("img", other),
        site.url("img", "no-such-image.jpg"),  # 404: failed
    ]
    job = unique_job("manifest")
    submit(fetcher, job, urls, [{"license": "CC BY 4.0"}, {}, {}, {"dcterms:rights": "CC0"}, {}])
    wait_done(fetcher, job, timeout=300)
    ended = outcomes(fetcher, job)
    assert [ended[n].state for n in range(5)] == [Outcome.INDEXED, Outcome.DUPLICATE, Outcome.INDEXED] + [
        Outcome.INDEXED,
        Outcome.FAILED,
    ]
    sha = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (original, reencoded, other)}

    output = tmp_path / "manifest.csv"
    made = _cli("manifest", job, "-o", str(output))
    assert made.returncode == 0, made.stderr
    with open(output, newline="") as handle:
        reader = csv.DictReader(handle)
        header, rows = list(reader.fieldnames or []), list(reader)
    assert header[:5] == ["filepath", "filename", "md5", "sha1", "sha256"], "sum-buddy's columns first"
    assert [r["record_id"] for r in rows] == [f"{job}:{n}" for n in range(4)], "a row per verified record"
    expected = [original, original, reencoded, other]
    for row, path in zip(rows, expected, strict=True):
        stored = store.get(row["key"])
        assert stored == path.read_bytes()
        for name in ("md5", "sha1", "sha256"):
            assert row[name] == hashlib.new(name, stored).hexdigest(), (row["record_id"], name)
        assert row["filepath"].endswith("/" + row["key"]) and row["filename"] == path.name
    assert [r["source_url"] for r in rows] == urls[:4]
    assert (rows[0]["license"], rows[3]["license"]) == ("CC BY 4.0", "CC0")
    assert (rows[1]["duplicate_of"], rows[1]["image_id"]) == (sha[original], sha[original])
    assert sha[original] in rows[2]["near_duplicates"]
    assert f"{job}:4" in made.stderr and "1 records have no row" in made.stderr, "the failed record is named"

    parts = list(current_checksummer.JobManifest(checksummer_pb2.JobManifestRequest(job_id=job, format="parquet")))
    summary = parts[-1].summary
    data = b"".join(p.data for p in parts)
    assert (summary.records, summary.rows, summary.without_row) == (5, 4, 1)
    assert store.get(summary.key) == data, "the assembled manifest is kept in S3"
    table = pq.read_table(io.BytesIO(data))
    assert table.column_names == header and table.column("record_id").to_pylist() == [r["record_id"] for r in rows]

    dupes = _cli("dupes", job)
    assert dupes.returncode == 0, dupes.stderr
    exact, _, near = dupes.stdout.partition("near duplicates")
    assert "exact duplicates: 1 groups, 2 records" in exact
    assert f"{job}:0 " in exact and f"{job}:1 " in exact and f"{job}:2 " not in exact
    # Groups take members from any job: another test's random image may sit near ours, so the assertions
    # are on this job's records — the re-encoded copy groups with its original, the other image apart.
    groups = re.split(r"\n  group \d+: ", near)[1:]
    [ours] = [g for g in groups if f"{job}:0 " in g]
    assert f"{job}:2 " in ours and f"{job}:3 " not in ours, dupes.stdout
    assert not any(f"{job}:2 " in g for g in groups if g is not ours), "one group holds the near copy"
    pair = rf"\d+ bits  ({job}:2  ~  {job}:[01]|{job}:[01]  ~  {job}:2)"  # :1 is :0's bytes, either may name them
    assert re.search(pair, ours), dupes.stdout


def test_unknown_jobs_are_named(current_checksummer):
    job = unique_job("never-submitted")
    manifest = _cli("manifest", job)
    assert manifest.returncode == 1 and f"no job '{job}'" in manifest.stderr
    dupes = _cli("dupes", job)
    assert dupes.returncode == 1 and "neither a file or directory here nor a job" in dupes.stderr
    with pytest.raises(grpc.RpcError) as error:
        current_checksummer.JobDuplicates(checksummer_pb2.JobDuplicatesRequest(job_id=job), timeout=30)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def _handled(metrics_port: int) -> float:
    """Messages the checksummer's worker finished, from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    pattern = r'^taxonstream_messages_total\{[^}]*stage="checksummer"[^}]*\} ([0-9.e+]+)$'
    return sum(float(v) for v in re.findall(pattern, text, flags=re.MULTILINE))


def test_two_checksummer_replicas_see_each_others_images(current_checksummer, fetcher, site, tmp_path):
    with extra_replica("checksummer", tmp_path / "replica.log") as replica:
        metrics_port = replica.metrics_port
        second = checksummer_pb2_grpc.ChecksummerStub(grpc.insecure_channel(f"127.0.0.1:{replica.port}"))
        first_before = _handled(CHECKSUMMER.metrics_port)
        images: list[Path] = []
        # Until the group has given the new replica partitions and both have verified some of the images.
        for _ in range(6):
            batch = site.hashable_images(8)
            job = unique_job("replicas")
            submit(fetcher, job, [site.url("img", p) for p in batch])
            assert wait_done(fetcher, job, timeout=300).indexed == len(batch)
            images += batch
            if _handled(metrics_port) > 0 and _handled(CHECKSUMMER.metrics_port) > first_before:
                break
        assert _handled(metrics_port) > 0, "the second replica never got a partition"
        assert _handled(CHECKSUMMER.metrics_port) > first_before, "the first replica never verified an image"

        for image in images:
            wanted = hashlib.sha256(image.read_bytes()).hexdigest()
            query = checksummer_pb2.FindDuplicatesRequest(image=_converted(image, "-probe").read_bytes())
            for name, stub in (("first", current_checksummer), ("second", second)):
                # Learning another replica's image is eventual (it follows the verified topic): a short wait.
                deadline = time.monotonic() + 30
                while wanted not in {n.image_id for n in stub.FindDuplicates(query, timeout=30).near}:
                    assert time.monotonic() < deadline, f"the {name} replica does not know {image.name}"
                    time.sleep(0.5)
