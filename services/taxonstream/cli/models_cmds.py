"""`taxonstream predict`, `taxonstream models …`: classification and model commands.

Heavy imports (torch, transformers) happen inside the handlers, so `taxonstream --help` stays fast.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import sys
from pathlib import Path

import grpc

from taxonstream.cli import clients, flags
from taxonstream.cli.clients import object_store
from taxonstream.fetching.inputs import InputError

RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
RANK_COLUMNS = ("kingdom", "phylum", "class", "order", "family", "genus", "species_epithet")


def _upload(out: Path, bucket: str, prefix: str) -> None:
    from taxonstream.models.checkpoints import upload_repository

    store = object_store(bucket)
    store.ensure_bucket()
    keys = upload_repository(out, store, prefix)
    where = f"s3://{bucket}/{prefix.strip('/')}" if prefix else f"s3://{bucket}"
    print(
        f"uploaded {len(keys)} files to {where} (Triton: --model-repository=s3://<endpoint>/{bucket}"
        f"{'/' + prefix.strip('/') if prefix else ''})"
    )


def cmd_repository(args: argparse.Namespace) -> int:
    """The stand-in repository for a target, optionally uploaded for Triton in Kubernetes."""
    from taxonstream.models.repository import describe_repository, write_repository

    print("\n".join(describe_repository(write_repository(Path(args.out), args.target))))
    if args.upload:
        _upload(Path(args.out), args.bucket, args.prefix)
    return 0


def cmd_install_detector(args: argparse.Namespace) -> int:
    """A DETR-family Hugging Face checkpoint folder into the Triton layout, behind the detector's contract."""
    from taxonstream.models.detector_checkpoints import install_detector

    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_dir():
        raise InputError(f"{checkpoint}: not a folder (a Hugging Face checkpoint: config.json + model.safetensors)")
    try:
        entry = install_detector(
            checkpoint,
            Path(args.out),
            args.target,
            args.version,
            args.name or "detr",
            args.label or (),
            args.image_size,
        )
    except (ValueError, KeyError, RuntimeError, OSError) as error:
        raise InputError(f"{checkpoint}: {error}") from error
    classes = entry["specimen_classes"]
    print(
        f"{entry['model_id']:24s} {entry['family']:6s} {entry['input_size'][0]}px, {entry['queries']} queries, "
        f"specimen = {'any class' if classes == 'any' else ', '.join(classes.values())}  "
        f"(export {entry['export_seconds']:.1f} s; torch vs onnxruntime max |diff| {entry['parity']:.2g})"
    )
    print(f"use it: TAXONSTREAM_DETECTOR_MODEL={entry['name']} TAXONSTREAM_DETECTOR_MODEL_VERSION={entry['version']}")
    if args.upload:
        _upload(Path(args.out), args.bucket, args.prefix)
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    """A real checkpoint (open_clip format) into the Triton layout, beside the stand-ins."""
    from taxonstream.models.checkpoints import install_clip

    if args.kind == "detr":
        return cmd_install_detector(args)
    if args.label or args.image_size:
        raise InputError("--label and --image-size apply to detr only")
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise InputError(f"{checkpoint}: no such file")
    try:
        entries = install_clip(
            args.kind, checkpoint, Path(args.out), args.target, args.version, name=args.name, quick_gelu=args.quick_gelu
        )
    except (ValueError, KeyError, RuntimeError) as error:
        raise InputError(f"{checkpoint}: {error}") from error
    for entry in entries:
        print(
            f"{entry['model_id']:24s} {entry['family']:18s} {entry['embedding_dim']}-d  "
            f"{entry['onnx_bytes'] / 2**20:.0f} MiB ONNX  (export {entry['export_seconds']:.1f} s; "
            f"torch vs onnxruntime max |diff| {entry['parity']:.2g})"
        )
    print(
        f"use them: TAXONSTREAM_EMBED_MODEL={entries[0]['name']} TAXONSTREAM_EMBED_TEXT_MODEL={entries[1]['name']} "
        f"TAXONSTREAM_INDEX_MODEL={entries[0]['name']}"
    )
    if args.upload:
        _upload(Path(args.out), args.bucket, args.prefix)
    return 0


def _labels(args: argparse.Namespace) -> list[str]:
    labels = list(args.labels or [])
    if args.labels_file:
        path = Path(args.labels_file)
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        labels += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return labels


def _table(rows: list[list[str]], header: list[str], out) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


def cmd_predict(args: argparse.Namespace) -> int:
    from taxonstream.classify.templates import TEMPLATE_SETS
    from taxonstream.v1 import indexer_pb2, indexer_pb2_grpc

    labels = _labels(args)
    if labels and args.rank:
        raise InputError("give either --rank or --labels/--labels-file, not both")
    templates = list(TEMPLATE_SETS[args.templates]) if labels else []
    rank = "" if labels else (args.rank or "species")
    depth = RANKS.index(rank) + 1 if rank else 0
    header = (
        ["file_name", *RANK_COLUMNS[:depth]] + (["species", "common_name"] if rank == "species" else [])
        if rank
        else ["file_name", "classification"]
    ) + ["score"]
    rows: list[list[str]] = []
    with clients.channel("indexer") as channel:
        stub = indexer_pb2_grpc.IndexerStub(channel)
        for image in args.images:
            path = Path(image)
            if not path.is_file():
                raise InputError(f"{path}: no such file")
            request = indexer_pb2.ClassifyRequest(
                image=path.read_bytes(), labels=labels, rank=rank, k=args.k, templates=templates, bank=args.bank
            )
            response = stub.Classify(request, timeout=600)
            for p in response.predictions:
                names = [p.label] if not rank else list(p.taxon)
                if rank == "species":
                    names += [p.label, p.common_name]
                rows.append([str(path), *names, f"{p.score:.6f}"])
    if args.format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(header)
        writer.writerows(rows)
    else:
        _table(rows, header, sys.stdout)
        print(f"(model {response.model}/{response.model_version})", file=sys.stderr)
    return 0


def cmd_bank(args: argparse.Namespace) -> int:
    """Store a label-embedding bank: from pybioclip-style files, or by embedding names through the embedder."""
    import numpy as np

    from taxonstream.classify.service import store_bank
    from taxonstream.classify.templates import TEMPLATE_SETS, prompts
    from taxonstream.classify.zeroshot import LabelBank, label_embeddings
    from taxonstream.v1 import embedder_pb2, embedder_pb2_grpc

    names_path = Path(args.names)
    if not names_path.is_file():
        raise InputError(f"{names_path}: no such file")
    names = json.loads(names_path.read_text())
    with clients.channel("embedder") as channel:
        stub = embedder_pb2_grpc.EmbedderStub(channel)
        if args.embeddings:
            vectors = np.load(args.embeddings, allow_pickle=False)
            model = args.model or ""
            version = args.model_version or ""
            if not model:
                probe = stub.EmbedTexts(embedder_pb2.EmbedTextsRequest(texts=["x"]), timeout=120)
                model, version = probe.model, probe.model_version
        else:
            bank_for_names = LabelBank.from_arrays(np.zeros((len(names), 1), np.float32), names)
            texts = [" ".join(t) for t in bank_for_names.taxa]  # "Animalia Arthropoda … Danaus plexippus"
            all_prompts = prompts(texts, TEMPLATE_SETS[args.templates])
            parts = []
            for start in range(0, len(all_prompts), 512):
                answer = stub.EmbedTexts(
                    embedder_pb2.EmbedTextsRequest(texts=all_prompts[start : start + 512]), timeout=600
                )
                parts.append(np.asarray([v.values for v in answer.vectors], dtype=np.float32))
                model, version = answer.model, answer.model_version
            vectors = label_embeddings(np.concatenate(parts), len(texts))
    bank = LabelBank.from_arrays(vectors, names)
    store_bank(object_store(), args.name, bank, model, version)
    print(f"bank {args.name!r}: {len(bank.taxa)} species, {bank.embeddings.shape[1]}-d, model {model}/{version}")
    return 0


def _embed_files(paths: list[Path]):
    """Vectors of image files, cropped and embedded the way ingested images are; with the model's name."""
    import numpy as np

    from taxonstream.v1 import detector_pb2, detector_pb2_grpc, embedder_pb2, embedder_pb2_grpc

    vectors, model = [], ("", "")
    with clients.channel("detector") as det_channel, clients.channel("embedder") as emb_channel:
        detector = detector_pb2_grpc.DetectorStub(det_channel)
        embedder = embedder_pb2_grpc.EmbedderStub(emb_channel)
        for start in range(0, len(paths), 32):
            crops = []
            for path in paths[start : start + 32]:
                if not path.is_file():
                    raise InputError(f"{path}: no such file")
                crops.append(detector.Detect(detector_pb2.DetectRequest(image=path.read_bytes()), timeout=120).crop)
            answer = embedder.EmbedImages(embedder_pb2.EmbedImagesRequest(images=crops), timeout=300)
            vectors += [v.values for v in answer.vectors]
            model = (answer.model, answer.model_version)
    return np.asarray(vectors, dtype=np.float32), model


def _stored_images(job: str = "", filters: list[str] = (), model: str = "", version: str = ""):
    """Stored images with their vectors, streamed from the indexer (the index version of `model`, or the
    serving one)."""
    from taxonstream.classify.probe import StoredImage
    from taxonstream.v1 import indexer_pb2, indexer_pb2_grpc

    request = indexer_pb2.ListImagesRequest(
        job_id=job, filters=clients.index_filters(list(filters)), with_vectors=True, model=model, model_version=version
    )
    with clients.channel("indexer") as channel:
        try:
            for hit in indexer_pb2_grpc.IndexerStub(channel).ListImages(request, timeout=3600):
                yield StoredImage(hit.image_id, hit.metadata, hit.vector)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:  # a filter the index does not know
                raise InputError(error.details()) from error
            if model and error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
                raise InputError(
                    f"the index has no {model}/{version or '1'} version: {error.details()} "
                    "(`taxonstream stats` lists the versions)"
                ) from error
            raise


def _probe_train(args: argparse.Namespace) -> int:
    from taxonstream.classify.probe import FILE_COLUMN, match_stored, read_labelled, train

    path = Path(args.file)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    labelled = read_labelled(path, args.key)
    if labelled.key == FILE_COLUMN:
        if args.job or args.filter:
            raise InputError(
                "--job/--filter select stored images: give a CSV with image_id (or sha256, url, "
                "record_id), not file paths"
            )
        vectors, (model, version) = _embed_files([path.parent / value for value, _ in labelled.rows])
        labels, source = [label for _, label in labelled.rows], "files"
    else:
        stored = _stored_images(args.job or "", args.filter, args.model or "", args.model_version or "")
        vectors, labels, (model, version), missing = match_stored(labelled, stored, args.skip_missing)
        if missing:
            print(f"skipped {len(missing)} {labelled.key}s not in the index", file=sys.stderr)
        if args.model and (model, version) != (args.model, args.model_version or version):
            raise InputError(f"asked for {args.model} vectors, the index answered with {model}/{version}")
        source = "index"
    probe = train(vectors, labels, model, version, c=args.c, source=source)
    out = args.out or "probe.json"
    probe.save(Path(out))
    counts = ", ".join(f"{c} {labels.count(c)}" for c in probe.classes)
    print(
        f"probe over {len(labels)} {'stored ' if source == 'index' else ''}images ({counts}), "
        f"model {model}/{version} -> {out}"
    )
    return 0


def _probe_apply(args: argparse.Namespace) -> int:
    from taxonstream.classify.probe import Probe, output_header, score_rows

    probe = Probe.load(Path(args.file))
    if args.images:
        if args.job or args.filter:
            raise InputError("give image files or --job/--filter (stored images), not both")
        vectors, model = _embed_files([Path(i) for i in args.images])
        probe.check_model(*model, where="the embedder")
        rows = [
            [image, label, f"{score:.6f}"]
            for image, (label, score) in zip(args.images, probe.predict(vectors), strict=True)
        ]
        _table(rows, ["file_name", "classification", "score"], sys.stdout)
        return 0
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else []
    stored = _stored_images(args.job or "", args.filter, probe.model, probe.model_version)
    handle = open(args.out, "w", newline="") if args.out else sys.stdout  # noqa: SIM115 - stdout stays open
    scored, counts = 0, dict.fromkeys(probe.classes, 0)
    try:
        writer = csv.writer(handle)
        writer.writerow(output_header(probe, columns))
        # In chunks: an index of millions never sits in memory at once.
        while batch := list(itertools.islice(stored, 4096)):
            for row in score_rows(probe, batch, columns):
                writer.writerow(row)
                counts[row[1]] += 1
            scored += len(batch)
    finally:
        if args.out:
            handle.close()
    if not scored:
        selection = " ".join([f"--job {args.job}"] * bool(args.job) + [f"--filter {f}" for f in args.filter])
        print(
            f"no stored images{' for ' + selection if selection else ''} in the "
            f"{probe.model}/{probe.model_version} index",
            file=sys.stderr,
        )
        return 0
    summary = ", ".join(f"{c} {n}" for c, n in counts.items())
    where = f" to {args.out}" if args.out else ""
    print(
        f"scored {scored} stored images ({summary}), model {probe.model}/{probe.model_version}{where}", file=sys.stderr
    )
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from taxonstream.classify.probe import ProbeError

    try:
        return _probe_train(args) if args.action == "train" else _probe_apply(args)
    except ProbeError as error:
        raise InputError(str(error)) from error


def add_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "predict",
        help="classify images: open-ended to a rank, or zero-shot over your labels (pybioclip-style)",
        description="Open-ended: softmax over a label-embedding bank's species, summed per taxon for a higher "
        "rank. Zero-shot: each label through prompt templates. Runs on the stack's indexer.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--rank", choices=RANKS, help="predict to this rank with the bank (default species)")
    p.add_argument("--labels", nargs="+", metavar="LABEL", help="zero-shot over these labels")
    p.add_argument("--labels-file", metavar="FILE", help="zero-shot over the labels in FILE, one per line")
    p.add_argument("-k", type=int, default=5, help="predictions per image (default 5)")
    flags.add_templates_flag(
        p, "prompt templates for labels: the 80 OpenAI ImageNet ones (default) or 'a photo of {}.'"
    )
    p.add_argument("--bank", default="", help="label-embedding bank for --rank (default 'tol')")
    p.add_argument("--format", choices=["table", "csv"], default="table")
    p.set_defaults(run=cmd_predict)

    p = flags.add_described(
        commands,
        "probe",
        help="linear probe (logistic regression) on embeddings of a labelled set: train, apply",
        description="""\
A logistic regression on CLIP embeddings, for questions zero-shot answers badly (is this herbarium sheet
mercury-stained?). The probe is a JSON file (classes, weights, and the embedding model it was fitted on);
it only applies to vectors of that same model.

train CSV: a 'label' column and a column naming the images —
  image                               file paths (relative to the CSV), cropped and embedded now
  image_id | sha256 | url | record_id images already ingested: their stored vectors are used as they are
                                      (url/record_id: the record that first brought the image in)
  Labelled images missing from the index are listed and stop the run (--skip-missing: train without them).
apply: image files (a table), or stored images — those of --job, matching --filter, or all — as CSV:
  image_id,label,probability,p_<class>…,job_id,record_id,url,sha256[,--columns]""",
        epilog="""\
examples:
  taxonstream probe train labels.csv --out mercury.json          # labels.csv: image_id,label
  taxonstream probe apply mercury.json --job JOB --out scores.csv --columns catalogNumber
  taxonstream probe apply mercury.json sheet1.jpg sheet2.jpg""",
    )
    p.add_argument("action", choices=["train", "apply"])
    p.add_argument("file", help="train: the labelled CSV; apply: the probe JSON")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="apply: image files to classify (else stored images)")
    p.add_argument(
        "--out", help="train: where to write the probe (default probe.json); apply: CSV file (default standard output)"
    )
    p.add_argument("-C", dest="c", type=float, default=1.0, help="train: inverse regularisation strength")
    p.add_argument(
        "--key",
        choices=["image", "image_id", "sha256", "url", "record_id"],
        help="train: the CSV column naming the images (default: image, then image_id, sha256, url, "
        "record_id, the first present)",
    )
    p.add_argument("--job", metavar="JOB", help="only stored images whose first record came from JOB")
    flags.add_filter_flag(p, "only stored images matching (repeat to AND), as in `search`")
    p.add_argument(
        "--model",
        help="train: the index version (embedding model) to take vectors from "
        "(default: the serving one); apply uses the probe's",
    )
    p.add_argument("--model-version", help="train: with --model (default 1)")
    p.add_argument(
        "--skip-missing",
        action="store_true",
        help="train: leave out labelled images that are not in the index instead of stopping",
    )
    p.add_argument("--columns", help="apply: more metadata columns to write, comma-separated (catalogNumber,…)")
    p.set_defaults(run=cmd_probe)

    models = commands.add_parser("models", help="label-embedding banks; Triton model repositories")
    sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    b = sub.add_parser("bank", help="store a label-embedding bank for `predict --rank` in S3 (banks/NAME/)")
    b.add_argument("--name", default="tol", help="bank name (default 'tol')")
    b.add_argument(
        "--names",
        required=True,
        metavar="JSON",
        help="[[kingdom, phylum, class, order, family, genus, epithet], common_name] per species",
    )
    b.add_argument(
        "--embeddings",
        metavar="NPY",
        help="precomputed text embeddings ([D, N] as pybioclip's, or "
        "[N, D]); without it the names are embedded through the embedder",
    )
    flags.add_templates_flag(b)
    b.add_argument("--model", help="with --embeddings: the model they come from (default: the embedder's)")
    b.add_argument("--model-version")
    b.set_defaults(run=cmd_bank)

    def _target_and_upload(parser: argparse.ArgumentParser) -> None:
        from taxonstream.core.local_stack import model_repository

        parser.add_argument(
            "--out", default=str(model_repository()), help="repository folder (default: the local stack's)"
        )
        parser.add_argument(
            "--target",
            choices=["local", "cluster"],
            default="local",
            help="local: Python backend + onnxruntime (CPU); cluster: NVIDIA Triton onnxruntime_onnx",
        )
        parser.add_argument("--upload", action="store_true", help="copy the repository to S3 afterwards")
        parser.add_argument("--bucket", default="models", help="S3 bucket for --upload (default 'models')")
        parser.add_argument("--prefix", default="", help="key prefix inside the bucket")

    r = sub.add_parser("repository", help="write the stand-in models' Triton repository (and upload it)")
    _target_and_upload(r)
    r.set_defaults(run=cmd_repository)
    i = sub.add_parser(
        "install",
        help="a real checkpoint into Triton's layout: BioCLIP / BioCLIP 2 (open_clip "
        "format) or a DETR-family detector (Hugging Face folder)",
    )
    i.add_argument("kind", choices=["bioclip", "bioclip2", "detr"])
    i.add_argument(
        "--checkpoint",
        required=True,
        help="bioclip*: open_clip state dict (.bin/.pt or .safetensors); "
        "detr: Hugging Face folder with config.json and model.safetensors or pytorch_model.bin",
    )
    i.add_argument("--name", help="model name in the repository (default: the kind, e.g. bioclip -> bioclip_image)")
    i.add_argument("--version", default="1", help="model version to write (default 1)")
    i.add_argument(
        "--quick-gelu",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bioclip*: the towers' activation, QuickGELU or not (--no-quick-gelu); default: the open_clip "
        "config beside the checkpoint (open_clip_config.json or config.json, key quick_gelu: false for BioCLIP "
        "and BioCLIP 2, true for OpenAI's CLIP), GELU when there is none",
    )
    i.add_argument(
        "--label",
        action="append",
        metavar="CLASS",
        help="detr: class (name or id) that counts as a "
        "specimen, repeatable; default: the only class, or any class but no-object",
    )
    i.add_argument(
        "--image-size",
        type=int,
        metavar="S",
        help="detr: input side S (default: the checkpoint's training size from preprocessor_config.json, else 800)",
    )
    _target_and_upload(i)
    i.set_defaults(run=cmd_install)
